"""MemScheduler on a real MOS: driven by adds, user turns and answers; nothing leaves the declarative store."""

import pytest

from memos_lab.errors import ConfigError
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.mos import MOS
from memos_lab.scheduler.base import Budget, MemScheduler
from memos_lab.scheduler.lru import LRUPolicy

FACTS = [
    "Maya moved to Lisbon in March",
    "Leo adopted a rescue dog called Biscuit",
    "the weather was grey all week",
    "Maya started pottery classes",
    "we ate a huge pot of soup",
]


@pytest.fixture
def mos(embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder, fusion="bm25"))
    mos.register_user("u")
    mos.create_cube("u", cube_id="c")
    return mos


def test_adds_fill_working_memory_and_evictions_keep_the_store(mos):
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=2))
    ids = [mos.add("u", "c", [text])[0] for text in FACTS]
    assert [item.id for item in scheduler.memories()] == ids[-2:]
    assert scheduler.evicted == 3
    assert len(mos.get_all("u", "c")) == len(FACTS)  # nothing lost from the declarative store


def test_a_user_turn_retrieves_evicted_memories_back(mos):
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=2), top_k=1)
    ids = [mos.add("u", "c", [text])[0] for text in FACTS]
    assert ids[1] not in scheduler
    memories = scheduler.on_user_turn("what is the name of Leo's dog?")
    assert ids[1] in scheduler and ids[1] in [item.id for item in memories]
    # The answer repeats "Biscuit": the dog memory is credited with a use, the soup memory is not.
    assert scheduler.on_answer("Biscuit") == [ids[1]]


def test_updates_and_deletes_follow_the_store(mos):
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=3))
    first, second = mos.add("u", "c", FACTS[:2])
    new = mos.update("u", "c", first, "Maya moved to Porto in May")
    assert first not in scheduler and new.id in scheduler
    mos.delete("u", "c", second)
    assert second not in scheduler
    assert [item.text for item in scheduler.memories()] == ["Maya moved to Porto in May"]


def test_other_cubes_and_detached_schedulers_are_ignored(mos):
    mos.create_cube("u", cube_id="other")
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=3))
    mos.add("u", "other", ["elsewhere"])
    assert scheduler.memories() == []
    scheduler.detach()
    mos.add("u", "c", ["after detaching"])
    assert scheduler.memories() == []


def test_bad_settings(mos):
    with pytest.raises(ConfigError, match="top_k must be a positive integer, got 0"):
        MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=3), top_k=0)
