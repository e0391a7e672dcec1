"""Shared fixtures: small hand-written records, a fast embedder, a MOS."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.settings import register_schemas

# Tests compose conf/ with Hydra directly, as the CLI does after registering the settings schemas.
register_schemas()


@pytest.fixture
def isolated_registry(monkeypatch):
    """Components a test registers are forgotten after it."""
    from memos_lab import registry

    monkeypatch.setattr(registry, "_registered", dict(registry._registered))


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: skipped, saying so, where torch sees no GPU (scripts/device_check.sh runs them)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none); scripts/device_check.sh runs these")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="module")
def scrambled_tiny():
    """One per test module (LoRA tests attach adapters to it). A tiny Llama with large random weights, on the CPU: its greedy answers depend on every prompt token
    (a freshly initialised one just repeats its last input token, which would make any two paths agree)."""
    import torch

    from memos_lab.models.llm import LanguageModel, build_tiny_llama

    base = build_tiny_llama(seed=0, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in base.model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.3, generator=generator)
    return LanguageModel(model=base.model, tokenizer=base.tokenizer, name="tiny-llama-scrambled")
