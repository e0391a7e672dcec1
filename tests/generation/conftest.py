"""A real `transformers serve` process serving a tiny random Llama saved to a temp folder (one per session)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from memos_lab.models.llm import LanguageModel, build_tiny_llama


def scrambled_tiny_llama(seed: int = 0) -> LanguageModel:
    """A tiny Llama with large random weights: its greedy answers depend on every prompt token (a freshly
    initialised one repeats one token, which would make any two backends agree)."""
    base = build_tiny_llama(seed=seed, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in base.model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.3, generator=generator)
    return LanguageModel(model=base.model, tokenizer=base.tokenizer, name="tiny-llama-scrambled")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-served") / "model"
    lm = scrambled_tiny_llama()
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def served_url(tiny_folder: Path) -> Iterator[str]:
    """Base URL of `transformers serve` pinned to the tiny model (started once, stopped at the end)."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("transformers serve needs its extra: pip install 'transformers[serving]'")
    from memos_lab.generation.serve import transformers_serve

    with transformers_serve(tiny_folder) as url:
        yield url
