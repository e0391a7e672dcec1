"""Per-memory KV caches in the activation tier: composed in any order, never stale, under the budget, saved
through the artifact layer and refused for another model or template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memos_lab.cli import validate_overrides
from memos_lab.errors import ConfigError, DataError, IncompatibleError
from memos_lab.memory.activation.compose.base import encode_chunks
from memos_lab.memory.activation.compose.cacheblend import CacheBlendComposition
from memos_lab.memory.activation.compose.exact import ExactComposition
from memos_lab.memory.activation.compose.rerotate import RerotateComposition
from memos_lab.memory.activation.kv_cache import KVCacheMemory
from memos_lab.memory.activation.template import chunked_memory_prompt
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.decode import prefill
from memos_lab.models.llm import LanguageModel, build_tiny_llama
from memos_lab.mos import MOS

FACTS = [
    "Maya moved to Lisbon in March.",
    "Her dog is called Biscuit.",
    "She works as a nurse at Cobalt Health.",
    "Leo lives in Oslo.",
]


@pytest.fixture(scope="module")
def lm(scrambled_tiny: LanguageModel) -> LanguageModel:
    return scrambled_tiny


def fresh(lm: LanguageModel, lines: list[str], strategy=None):
    """The composition a memory with no stored cache makes of `lines`: every chunk encoded now."""
    prompt = chunked_memory_prompt(lm, lines)
    header = prefill(lm, prompt.header).snapshot()
    return (strategy or RerotateComposition()).compose(lm, prompt, encode_chunks(lm, prompt), header)


def same_kv(a, b) -> bool:
    return a.token_ids == b.token_ids and all(
        torch.allclose(x, y, atol=1e-4, rtol=1e-5)
        for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    )


def test_exact_composition_is_the_memory_message_and_a_full_prefill(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    question = lm.encode_chat([{"role": "user", "content": "Where?"}])
    for lines in (FACTS[:3], FACTS[2::-1], FACTS[1:]):
        composed = memory.compose(lines, ExactComposition())
        ids = memory.prompt_ids(lines)
        assert list(composed.cache.token_ids) == ids  # tokenised line by line, as the whole message is
        full, reused = prefill(lm, ids + question), prefill(lm, ids + question, composed.cache)
        assert (full.logits - reused.logits).abs().max().item() <= 1e-4


def test_only_memories_without_a_cache_are_encoded_in_any_order(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    first = memory.compose(FACTS[:3], RerotateComposition(), ["a", "b", "c"])
    assert first.encoded_tokens > 0
    again = memory.compose([FACTS[2], FACTS[0], FACTS[1]], RerotateComposition(), ["c", "a", "b"])
    assert again.encoded_tokens == 0  # all three stored (the last one as a view without its separator)
    more = memory.compose([FACTS[3], FACTS[1]], RerotateComposition(), ["d", "b"])
    assert 0 < more.encoded_tokens < first.encoded_tokens  # only "d" is new
    assert same_kv(again.cache, fresh(lm, [FACTS[2], FACTS[0], FACTS[1]]).cache)


def test_update_merge_and_delete_invalidate_so_no_stale_cache_is_used(embedder, lm: LanguageModel) -> None:
    mos = MOS(lambda: GeneralTextMemory(embedder))
    mos.register_user("u")
    cube = mos.create_cube("u", cube_id="c")
    memory = KVCacheMemory(lm)
    cube.activation = memory
    ids = mos.add("u", "c", FACTS)
    memory.compose(FACTS, RerotateComposition(), ids, key="set")
    assert any(ids[0] in s.items for s in memory.stats())
    new = mos.update("u", "c", ids[0], "Maya moved to Porto in May.")
    assert not any(ids[0] in s.items for s in memory.stats()) and "set" not in memory.keys()
    lines = [new.text, *FACTS[1:]]
    after = memory.compose(lines, RerotateComposition(), [new.id, *ids[1:]])
    assert same_kv(after.cache, fresh(lm, lines).cache)  # the new text's KV, not the archived one's
    merged = mos.merge("u", "c", ids[1:3], "Her dog Biscuit goes with her to Cobalt Health.")
    assert not any(set(ids[1:3]) & set(s.items) for s in memory.stats())
    mos.delete("u", "c", ids[3])
    assert not any(ids[3] in s.items for s in memory.stats())
    assert memory.compose([merged.text], RerotateComposition(), [merged.id]).encoded_tokens > 0


def test_a_changed_text_never_reuses_the_old_cache_even_without_invalidation(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.compose(FACTS[:2], RerotateComposition(), ["a", "b"])
    lines = ["Maya moved to Porto in May.", FACTS[1]]
    changed = memory.compose(lines, RerotateComposition(), ["a", "b"])  # same id, new text: a new key
    assert changed.encoded_tokens > 0 and same_kv(changed.cache, fresh(lm, lines).cache)


def test_chunk_caches_live_under_the_byte_budget(lm: LanguageModel) -> None:
    probe = KVCacheMemory(lm)
    probe.compose(FACTS, RerotateComposition(), ["a", "b", "c", "d"])
    budget = probe.nbytes * 0.6 / 2**20
    memory = KVCacheMemory(lm, budget_mb=budget)
    composed = memory.compose(FACTS, RerotateComposition(), ["a", "b", "c", "d"])
    assert memory.nbytes <= budget * 2**20 and len(memory.keys()) < len(probe.keys())
    assert same_kv(composed.cache, fresh(lm, FACTS).cache)  # evicted on the way, still composed right


def test_saved_chunks_load_ready_and_are_refused_for_another_template_or_model(tmp_path: Path, lm) -> None:
    memory = KVCacheMemory(lm)
    memory.compose(FACTS[:3], CacheBlendComposition(recompute_frac=0.5), ["a", "b", "c"], key="blend")
    memory.save(tmp_path / "kv")
    loaded = KVCacheMemory.load(tmp_path / "kv", lm)
    assert loaded.keys() == memory.keys()
    assert loaded.compose(FACTS[:3], RerotateComposition(), ["a", "b", "c"]).encoded_tokens == 0
    # an approximate composition is kept whole, never offered as an exact prefix
    assert loaded.best_prefix(loaded.prompt_ids(FACTS[:3]))[0] != "blend"
    with pytest.raises(IncompatibleError, match="made with model"):
        KVCacheMemory.load(tmp_path / "kv", build_tiny_llama(seed=1))
    manifest = tmp_path / "kv" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["meta"]["template"] = "Other memories:\n{memories}"
    manifest.write_text(json.dumps(raw))
    with pytest.raises(IncompatibleError, match="encoded behind another template's header"):
        KVCacheMemory.load(tmp_path / "kv", lm)
    memory.template = "Other memories:\n{memories}"  # a live memory whose template changed refuses them too
    with pytest.raises(IncompatibleError, match="encoded behind another template's header"):
        memory.compose(FACTS[:3], RerotateComposition(), ["a", "b", "c"])


def test_a_truncated_chunk_file_is_refused(tmp_path: Path, lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    memory.chunk_cache(FACTS[0], "a")
    memory.save(tmp_path / "kv")
    entries = json.loads((tmp_path / "kv" / "manifest.json").read_text())["meta"]["entries"]
    [chunk] = [e for e in entries if e.get("kind") == "chunk"]
    path = tmp_path / "kv" / chunk["file"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises((DataError, IncompatibleError), match=chunk["file"]):
        KVCacheMemory.load(tmp_path / "kv", lm)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["compose=blend"], "unknown choice 'blend' for config group 'compose'"),
        (["compose=cacheblend", "compose.recompute_frac=1.5"], r"compose.recompute_frac must be a number in \[0, 1\]"),
        (["compose=leading", "compose.recompute_frac=-1"], r"compose.recompute_frac must be a number in \[0, 1\]"),
        (["compose=cacheblend", "compose.check_layer=0"], "compose.check_layer must be a positive integer"),
    ],
)
def test_bad_strategy_settings_fail_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_overrides(overrides)


def test_compose_needs_lines_matching_their_ids(lm: LanguageModel) -> None:
    memory = KVCacheMemory(lm)
    with pytest.raises(ConfigError, match="2 item ids for 1 memory lines"):
        memory.compose(FACTS[:1], RerotateComposition(), ["a", "b"])
    with pytest.raises(ConfigError, match="at least one memory line"):
        memory.compose([], RerotateComposition())
