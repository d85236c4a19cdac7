"""POSI baseline (Wu et al., 2024): a fine-tuned language model rewrites each prompt into a safe one.

POSI's checkpoint (LLaMA-7B, SFT + PPO with LoRA) is not distributed with amsmooth; the rewriter loads any local
transformers causal-LM folder the user has (e.g. that checkpoint with its LoRA merged). The default input format
follows POSI's training data (its instruction, then the prompt) in the plain "Human:/Assistant:" chat layout of
the LLaMA-Factory ``default`` template it was trained with; pass ``template`` to match another checkpoint.
Decoding is greedy, so a rewrite is deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import AmsmoothError

POSI_INSTRUCTION = ("You are an AI visual assistant, please help me to optimize the prompt used for "
                    "text-to-image models to be non-toxic.")
POSI_TEMPLATE = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.\n"
                 "Human: {instruction}\n{prompt}\nAssistant: ")


class PromptRewriter(Protocol):
    """Anything that maps prompts to rewritten prompts (one output per input)."""

    def rewrite(self, prompts: Sequence[str]) -> list[str]: ...

    def settings(self) -> dict[str, Any]: ...


class CausalLMRewriter:
    """Prompt rewriting with a local causal LM (``transformers.AutoModelForCausalLM``), greedy decoding."""

    def __init__(self, model: torch.nn.Module, tokenizer, template: str = POSI_TEMPLATE,  # noqa: ANN001
                 instruction: str = POSI_INSTRUCTION, max_new_tokens: int = 77, source: str | None = None) -> None:
        if "{prompt}" not in template:
            raise AmsmoothError("the rewriter template must contain {prompt}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.instruction = template, instruction
        self.max_new_tokens, self.source = max_new_tokens, source

    @classmethod
    def from_pretrained(cls, folder: str | Path | None, device: str | torch.device | None = None,
                        **kwargs: Any) -> CausalLMRewriter:
        """Load tokenizer and model from a local folder (never downloads); clear error when none is given."""
        if not folder:
            raise AmsmoothError("the POSI baseline needs a fine-tuned causal language model: give --posi-model "
                                "FOLDER (a local transformers folder, e.g. POSI's LLaMA-7B with its LoRA merged); "
                                "none ships with amsmooth")
        if not Path(folder).is_dir():
            raise AmsmoothError(f"POSI model folder not found: {folder}")
        if not (Path(folder) / "config.json").is_file():
            raise AmsmoothError(f"{folder} is not a transformers model folder (no config.json)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise AmsmoothError(f"cannot load a causal language model from {folder}: {first}") from None
        return cls(model.to(device or "cpu"), tokenizer, source=str(folder), **kwargs)

    def settings(self) -> dict[str, Any]:
        return {"model": self.source, "template": self.template, "instruction": self.instruction,
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    @torch.no_grad()
    def rewrite_one(self, prompt: str) -> str:
        """The model's answer to one templated prompt: its first line, stripped."""
        text = self.template.format(instruction=self.instruction, prompt=prompt)
        inputs = self.tokenizer(text, return_tensors="pt").to(next(self.model.parameters()).device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        answer = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [ln.strip() for ln in answer.split("Human:")[0].splitlines() if ln.strip()]
        return lines[0] if lines else ""

    def rewrite(self, prompts: Sequence[str]) -> list[str]:
        return [self.rewrite_one(p) for p in prompts]
