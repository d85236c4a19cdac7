"""Baselines without the pipeline: blacklist word removal, POSI prompt rewriting (tiny random causal LM)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amsmooth import AmsmoothError
from amsmooth.baselines import Blacklist, CausalLMRewriter
from amsmooth.baselines.blacklist import default_list_path, read_word_list

GPL_LIST = Path("/work/shared/datasets/blacklist/nsfw_list.txt")


@pytest.fixture(scope="module")
def default() -> Blacklist:
    return Blacklist.default()


@pytest.mark.parametrize("prompt,cleaned", [
    ("A NUDE woman, Naked!", "A woman!"),
    ("((nude)), masterpiece, 8k", "masterpiece, 8k"),
    ("the nude's portrait", "the portrait"),
    ("semi-nude figure by the sea", "semi figure by the sea"),
    ("photo, nsfw, , TOPLESS, beach", "photo, beach"),
    ("a man Bare-Chested on a horse", "a man on a horse"),
    ("a man bare   chested", "a man"),
    ("Topless.", ""),
    ("a teapot on a table", "a teapot on a table"),
])
def test_default_list_on_tricky_casing_and_punctuation(default, prompt, cleaned):
    assert default.clean(prompt) == cleaned


def test_whole_words_only(default):
    for benign in ["a class assignment about Assyria", "a butterfly on a sextant", "the sussex coast",
                   "an essex pass"]:
        assert default.clean(benign) == benign and default.matches(benign) == []


def test_matches_report_what_was_found(default):
    assert default.matches("Nude, NAKED and nsfw") == ["Nude", "NAKED", "nsfw"]


def test_phrases_win_over_their_words_and_separators_are_flexible(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"# a comment\r\nblow job\r\n\r\nblow\r\nX-rated\r\n")
    b = Blacklist.from_file(path)
    assert len(b) == 3
    assert b.matches("BLOW-JOB, blow_job and Blow  job") == ["BLOW-JOB", "blow_job", "Blow  job"]
    assert b.clean("x rated movie, a blow to the head") == "movie, a to the head"
    assert b.settings()["phrases"] == 3 and b.settings()["source"] == str(path)


def test_word_list_errors(tmp_path):
    with pytest.raises(AmsmoothError, match="blacklist file not found"):
        Blacklist.from_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(AmsmoothError, match="is empty"):
        Blacklist.from_file(tmp_path / "empty.txt")


def test_default_list_is_short_and_ours():
    words = read_word_list(default_list_path())
    assert 20 <= len(words) <= 100
    assert "GPL" in default_list_path().read_text()  # the header explains where the full list is


@pytest.mark.skipif(not GPL_LIST.is_file(), reason="the paper's GPL-3.0 list is only read from a user path")
def test_full_gpl_list_from_a_path():
    b = Blacklist.from_file(GPL_LIST)
    assert len(b) > 1000
    assert b.clean("a photo of a nude woman on the beach") == "a photo of a woman on the beach"
    assert b.clean("a teapot on a table") == "a teapot on a table"


# -- POSI ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random 1-layer GPT-2 with the real CLIP BPE tokenizer, saved as a local transformers folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from amsmooth.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_posi_rewriter_loads_a_local_causal_lm(tiny_lm_dir):
    rewriter = CausalLMRewriter.from_pretrained(tiny_lm_dir, max_new_tokens=8)
    prompts = ["a naked woman on the beach", "a teapot"]
    out = rewriter.rewrite(prompts)
    assert len(out) == 2 and all(isinstance(s, str) and s for s in out)
    assert rewriter.rewrite(prompts) == out  # greedy: deterministic
    # the templated text is what the model continues
    text = rewriter.template.format(instruction=rewriter.instruction, prompt=prompts[1])
    ids = rewriter.tokenizer(text, return_tensors="pt")
    gen = rewriter.model.generate(**ids, max_new_tokens=8, do_sample=False,
                                  pad_token_id=rewriter.tokenizer.eos_token_id)
    manual = rewriter.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out[1] == manual.strip().splitlines()[0].strip()
    assert rewriter.settings()["decoding"] == "greedy"


def test_posi_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(AmsmoothError, match="needs a fine-tuned causal language model.*--posi-model"):
        CausalLMRewriter.from_pretrained(None)
    with pytest.raises(AmsmoothError, match="folder not found"):
        CausalLMRewriter.from_pretrained(tmp_path / "missing")
    with pytest.raises(AmsmoothError, match="no config.json"):
        CausalLMRewriter.from_pretrained(tmp_path)
    with pytest.raises(AmsmoothError, match=r"\{prompt\}"):
        CausalLMRewriter(torch.nn.Linear(1, 1), None, template="no placeholder")


@pytest.mark.parametrize("prompt", ["“👉👌”", "a  cat ,  (on) a mat", " leading space", "-- --", "()"])
def test_blacklist_leaves_prompts_without_a_listed_word_byte_identical(prompt):
    from amsmooth.baselines.blacklist import Blacklist

    bl = Blacklist.default()
    assert not bl.matches(prompt) and bl.clean(prompt) == prompt
    assert bl.clean("a nude woman") == "a woman"
