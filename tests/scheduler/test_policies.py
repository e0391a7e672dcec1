"""Every policy on a hand-made trace whose evictions were worked out by hand (see each test's comment)."""

from pathlib import Path

import hydra.utils
import pytest

from memos_lab.cli import CONF_DIR, validate_overrides
from memos_lab.errors import ConfigError
from memos_lab.memory.item import MemoryItem
from memos_lab.scheduler.base import Budget, SchedulingPolicy, WorkingMemory
from memos_lab.scheduler.lfu import LFUPolicy
from memos_lab.scheduler.lru import LRUPolicy
from memos_lab.scheduler.memos import MemOSPolicy
from memos_lab.scheduler.recency import RecencyPolicy
from memos_lab.scheduler.relevance import RelevancePolicy
from memos_lab.settings import group_config

TEXTS = {
    "a": "Maya moved to Lisbon",
    "b": "the weather was grey",
    "c": "Leo adopted a dog",
    "d": "work was busy",
    "e": "we ate soup",
}


def items(names: str) -> list[MemoryItem]:
    return [MemoryItem(TEXTS[name], id=name) for name in names]


def run(memory: WorkingMemory, trace) -> list[str]:
    """Replay (accessed names, query, relevance) steps; the evicted names of every step, joined."""
    evicted = []
    for accessed, query, relevance in trace:
        evicted.append("".join(item.id for item in memory.step(items(accessed), query, relevance)))
    return evicted


def test_lru_evicts_the_least_recently_used():
    # a b c fill three slots; a is touched at step 4; d evicts b (last used 2), e evicts c (3).
    memory = WorkingMemory(LRUPolicy(), Budget(max_items=3))
    assert run(
        memory,
        [
            ("a", None, None),
            ("b", None, None),
            ("c", None, None),
            ("a", None, None),
            ("d", None, None),
            ("e", None, None),
        ],
    ) == ["", "", "", "", "b", "c"]
    assert [entry.item.id for entry in memory.entries()] == ["a", "d", "e"]


def test_lfu_evicts_the_least_used_and_breaks_ties_by_recency():
    # Uses after step 6: a=3, b=2, c=1. d evicts c; then e evicts d (1 use), where LRU would evict a.
    memory = WorkingMemory(LFUPolicy(), Budget(max_items=3))
    trace = [
        ("a", None, None),
        ("b", None, None),
        ("c", None, None),
        ("a", None, None),
        ("a", None, None),
        ("b", None, None),
        ("d", None, None),
        ("e", None, None),
    ]
    assert run(memory, trace) == ["", "", "", "", "", "", "c", "d"]
    # Ties: b and c both used once; the older use leaves.
    memory = WorkingMemory(LFUPolicy(), Budget(max_items=2))
    assert run(memory, [("b", None, None), ("c", None, None), ("d", None, None)]) == ["", "", "b"]


@pytest.mark.parametrize(
    "half_life, evicted",
    [
        # At step 6: a (used at 1,2,3) weighs 2^-5+2^-4+2^-3 = 0.219 < b (4) 2^-2 = 0.25 < c (5) 2^-1: a leaves.
        (1.0, "a"),
        # With a long memory a's three uses (~2.9) outweigh b's one (~0.98) and c's (~0.99): b leaves.
        (100.0, "b"),
    ],
)
def test_recency_decays_uses_with_the_half_life(half_life, evicted):
    memory = WorkingMemory(RecencyPolicy(half_life=half_life), Budget(max_items=3))
    trace = [
        ("a", None, None),
        ("a", None, None),
        ("a", None, None),
        ("b", None, None),
        ("c", None, None),
        ("d", None, None),
    ]
    assert run(memory, trace)[-1] == evicted


def test_relevance_evicts_the_least_similar_to_the_current_turn():
    # Step 2 pins c; of a (0.2) and b (0.8) for this turn, a leaves although b was less relevant before.
    memory = WorkingMemory(RelevancePolicy(), Budget(max_items=2))
    trace = [("ab", "q1", {"a": 0.9, "b": 0.1}), ("c", "q2", {"a": 0.2, "b": 0.8, "c": 0.5})]
    assert run(memory, trace) == ["", "a"]


def test_memos_weighs_relevance_keywords_and_usage():
    # Step 4 (query "Lisbon flat", keywords {lisbon, flat}) scores with weights .5/.3/.2, max uses 3 (a):
    #   a: .5*.2 + .3*(1/2) + .2*(3/3) = .45      b: .5*.6 + .3*0 + .2*(1/3) = .367
    # so b leaves; LRU would have evicted a (last used at step 2) instead.
    memory = WorkingMemory(MemOSPolicy(relevance_weight=0.5, keyword_weight=0.3, usage_weight=0.2), Budget(max_items=2))
    trace = [("a", None, None), ("a", None, None), ("b", None, None), ("c", "Lisbon flat", {"a": 0.2, "b": 0.6})]
    assert run(memory, trace) == ["", "", "", "b"]
    lru = WorkingMemory(LRUPolicy(), Budget(max_items=2))
    assert run(lru, trace) == ["", "", "", "a"]
    # Keyword overlap alone keeps the item that shares a word with the turn.
    keyword_only = WorkingMemory(MemOSPolicy(relevance_weight=0, keyword_weight=1, usage_weight=0), Budget(max_items=2))
    assert run(keyword_only, [("a", None, None), ("b", None, None), ("c", "a flat in Lisbon", None)]) == ["", "", "b"]


def test_items_of_the_current_step_leave_only_when_the_budget_cannot_hold_them():
    memory = WorkingMemory(RelevancePolicy(), Budget(max_items=2))
    assert run(memory, [("abc", "q", {"a": 0.3, "b": 0.1, "c": 0.2})]) == ["b"]


def test_token_budget():
    # Word counts: a=4, b=4, c=4 with a budget of 9 tokens: c evicts a (LRU).
    memory = WorkingMemory(LRUPolicy(), Budget(max_tokens=9))
    assert run(memory, [("a", None, None), ("b", None, None), ("c", None, None)]) == ["", "", "a"]
    assert memory.tokens == 8


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"max_items": None}, "needs a budget"),
        ({"max_items": 0}, "max_items must be a positive integer, got 0"),
        ({"max_tokens": -5}, "max_tokens must be a positive integer, got -5"),
        ({"max_items": 2.5}, "max_items must be an integer or null"),
    ],
)
def test_bad_budgets_are_refused(budget, message):
    with pytest.raises(ConfigError, match=message):
        Budget(**budget)


def test_the_default_budget_works_outside_hydra():
    assert Budget().max_items == 16 and not Budget().exceeded(items=16, tokens=10**6)


def test_bad_policies_are_refused():
    with pytest.raises(ConfigError, match="must be a SchedulingPolicy, got str"):
        WorkingMemory("lru", Budget(max_items=1))
    with pytest.raises(ConfigError, match="half_life must be a positive number"):
        RecencyPolicy(half_life=0)
    with pytest.raises(ConfigError, match="usage_weight must be a non-negative number"):
        MemOSPolicy(usage_weight=-1)
    with pytest.raises(ConfigError, match="at least one of"):
        MemOSPolicy(relevance_weight=0, keyword_weight=0, usage_weight=0)
    with pytest.raises(ConfigError, match="unknown choice 'belady' for config group 'scheduler'; valid: .*lru"):
        validate_overrides(["scheduler=belady"])


@pytest.mark.parametrize("path", sorted((CONF_DIR / "scheduler").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_scheduler_config_builds_its_policy(path: Path):
    policy = hydra.utils.instantiate(group_config("scheduler", path.stem))
    assert isinstance(policy, SchedulingPolicy) and policy.name == path.stem
