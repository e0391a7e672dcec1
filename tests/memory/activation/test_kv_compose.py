"""Position-corrected composition: re-rotation is RoPE-exact; full recompute collapses to exact mode."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.compose import (
    _inv_freq,
    chunked_memory_prompt,
    compose_chunks,
    encode_chunks,
    rerotate,
)
from memos_lab.memory.activation.kv_cache import prefill
from memos_lab.models.llm import LanguageModel, build_tiny_llama

TEXTS = ["Maya lives in Lisbon.", "Her dog is called Biscuit.", "She works as a nurse at Cobalt Health."]


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0)


@torch.no_grad()
def keys_at(lm: LanguageModel, ids: list[int], start: int) -> list[torch.Tensor]:
    cache = DynamicCache(config=lm.model.config)
    positions = torch.arange(start, start + len(ids))[None]
    lm.model(input_ids=torch.tensor([ids]), position_ids=positions, past_key_values=cache, use_cache=True)
    return [layer.keys for layer in cache.layers]


def test_rerotation_equals_encoding_at_the_new_positions(lm: LanguageModel) -> None:
    ids = lm.tokenizer.encode(TEXTS[1], add_special_tokens=False)
    inv_freq = _inv_freq(lm)
    for start, moved in [(0, 37), (50, 3)]:
        for original, target in zip(keys_at(lm, ids, start), keys_at(lm, ids, moved), strict=True):
            assert (rerotate(original, moved - start, inv_freq) - target).abs().max().item() <= 1e-4


def test_composition_layout_and_exactness_limits(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    question = lm.tokenizer.encode(
        "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    ids = prompt.ids + question
    reference = prefill(lm, ids)
    chunks = encode_chunks(lm, prompt)
    approx, recomputed = compose_chunks(lm, prompt, chunks, recompute_frac=0.0)
    assert list(approx.token_ids) == prompt.ids[: len(prompt.ids) - len(prompt.footer)] and recomputed == 0
    gap = (prefill(lm, ids, approx).logits - reference.logits).abs().max().item()
    exact, recomputed = compose_chunks(lm, prompt, chunks, recompute_frac=1.0)
    assert recomputed == sum(len(c) for c in prompt.chunks[1:])
    assert (prefill(lm, ids, exact).logits - reference.logits).abs().max().item() <= 1e-5
    one = chunked_memory_prompt(lm, TEXTS[:1])
    single, _ = compose_chunks(lm, one, encode_chunks(lm, one))
    assert list(single.token_ids) == one.ids[: len(one.ids) - len(one.footer)]
    assert gap > 1e-5  # later chunks never saw earlier ones: approximate, and the test would notice otherwise


def test_bad_recompute_fraction_and_foreign_chunks_are_refused(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    with pytest.raises(ConfigError, match="recompute_frac"):
        compose_chunks(lm, prompt, chunks, recompute_frac=1.5)
    with pytest.raises(ConfigError, match="does not hold"):
        compose_chunks(lm, prompt, list(reversed(chunks)))
