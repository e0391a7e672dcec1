"""Chat sessions reuse their KV cache across turns, exactly, and crop it when the prompt's ids change."""

from __future__ import annotations

import logging

import pytest

from memos_lab.memory.activation.kv_cache import KVCacheMemory, generate, memory_messages, prefill
from memos_lab.memory.activation.session import ChatSession
from memos_lab.models.llm import LanguageModel, build_tiny_llama

TURNS = [
    ("Hi! I just moved to Lisbon.", "Congratulations, how is the new flat?"),
    ("Small, but it has a balcony. My dog Biscuit loves it.", "Biscuit is a lovely name."),
    ("Thanks! What should I cook tonight?", "Maybe some grilled sardines?"),
]
MEMORY = "Maya is a nurse and plays tennis."


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0)


def test_session_prefills_only_new_tokens_and_matches_full_recompute(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", MEMORY)
    session = ChatSession(lm, memory, memory_messages([MEMORY]))
    previous = 0
    for user, assistant in TURNS:
        session.add("user", user)
        ids = session.prompt_ids()
        result = session.prefill()
        # everything but this turn's new tokens comes from the cache (the memory on the first turn)
        assert result.reused == (previous or len(memory.get("maya")))
        assert result.computed == len(ids) - result.reused
        assert (result.logits - prefill(lm, ids).logits).abs().max().item() <= 1e-5
        assert len(session.cache) == len(ids)
        previous = len(ids)
        session.add("assistant", assistant)
    full_tokens = sum(len(lm.encode_chat(session.messages[: 2 + 2 * i], True)) for i in range(len(TURNS)))
    assert session.reused_tokens + session.computed_tokens == full_tokens
    assert session.computed_tokens < full_tokens / 2


def test_generated_replies_equal_full_recompute(lm: LanguageModel) -> None:
    session = ChatSession(lm)
    plain = []
    for user, _ in TURNS:
        session.add("user", user)
        plain.append({"role": "user", "content": user})
        expected, _, _ = generate(lm, lm.encode_chat(plain), None, max_new_tokens=8)
        text = session.reply(max_new_tokens=8)
        assert text == lm.tokenizer.decode(expected, skip_special_tokens=True)
        plain.append({"role": "assistant", "content": text})
    assert session.reused_tokens > 0


def test_changed_history_is_detected_by_token_ids(lm: LanguageModel, caplog: pytest.LogCaptureFixture) -> None:
    session = ChatSession(lm)
    session.add("user", TURNS[0][0])
    session.prefill()
    cached = len(session.cache)
    session.messages[0]["content"] = TURNS[0][0].replace("Lisbon", "Oslo")  # an edited earlier turn
    session.add("assistant", TURNS[0][1])
    with caplog.at_level(logging.INFO, logger="memos_lab.models.decode"):
        result = session.prefill()
    assert "diverges" in caplog.text
    assert 0 < result.reused < cached
    assert (result.logits - prefill(lm, session.prompt_ids()).logits).abs().max().item() <= 1e-5
