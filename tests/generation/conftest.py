"""A real `transformers serve` process serving a tiny random Llama saved to a temp folder (one per test module)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from memos_lab.models.llm import LanguageModel


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, scrambled_tiny: LanguageModel) -> Path:
    folder = tmp_path_factory.mktemp("tiny-served") / "model"
    lm = scrambled_tiny
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served_url(tiny_folder: Path) -> Iterator[str]:
    """Base URL of `transformers serve` pinned to the tiny model (started once, stopped at the end)."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("transformers serve needs its extra: pip install 'transformers[serving]'")
    from memos_lab.generation.serve import transformers_serve

    with transformers_serve(tiny_folder) as url:
        yield url
