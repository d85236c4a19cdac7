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
    from amsmooth.tiny import tiny_text_encoder

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
