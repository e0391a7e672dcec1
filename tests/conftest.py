"""Shared fixtures: small hand-written records, a fast embedder, a MOS."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from memos_lab.memory.textual.general_text import GeneralTextMemory  # noqa: E402
from memos_lab.models.embedder import HashingEmbedder  # noqa: E402
from memos_lab.settings import register_schemas  # noqa: E402

# Tests compose conf/ with Hydra directly, as the CLI does after registering the settings schemas.
register_schemas()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dim=256)


@pytest.fixture
def text_memory(embedder: HashingEmbedder) -> GeneralTextMemory:
    return GeneralTextMemory(embedder)


@pytest.fixture
def single_thread():
    """torch on one thread: on a shared, loaded machine its two-thread kernels run ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
