"""The scheduler and the one interface of its policies.

`WorkingMemory` is the bounded tier the model sees (an item or token budget); a `SchedulingPolicy`
ranks its entries and the lowest-ranked leave first. `MemScheduler` attaches to the MOS and drives
the working memory from the dialogue stream: every add, every user turn (retrieve, admit, evict) and
every answer (credit the memories it used). The tiers hold references only: an item that leaves a
faster tier stays in the declarative store.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from memos_lab.errors import ConfigError
from memos_lab.memory.item import ACTIVE, MemoryItem
from memos_lab.mos import MOS
from memos_lab.settings import Settings, positive_int

_WORD = re.compile(r"[a-z0-9]+")


def keywords(text: str) -> frozenset[str]:
    """Lower-cased content words: no stop words, no one- or two-letter tokens."""
    return frozenset(w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in ENGLISH_STOP_WORDS)


def word_count(text: str) -> int:
    """The token counter used when no tokenizer is given."""
    return len(text.split())


@dataclass
class Entry:
    """One working-memory slot: an item plus what the policies rank it by. Times are scheduler steps."""

    item: MemoryItem
    tokens: int
    keywords: frozenset[str]
    admitted_at: int
    order: int  # admission sequence number, the last tie-breaker
    use_times: list[int] = field(default_factory=list)
    relevance: float = 0.0  # similarity to the current turn's text, in [-1, 1]

    @property
    def uses(self) -> int:
        return len(self.use_times)

    @property
    def last_used_at(self) -> int:
        return self.use_times[-1] if self.use_times else self.admitted_at


@dataclass(frozen=True)
class TurnContext:
    """What a policy may look at besides the entry: the clock and the current turn."""

    now: int
    keywords: frozenset[str] = frozenset()
    max_uses: int = 0  # over the entries in working memory, to normalise usage counts


@dataclass(frozen=True)
class PolicySettings(Settings):
    """A policy without settings of its own (lru, lfu, relevance): its YAML names this schema."""

    section: ClassVar[str] = "scheduler"


class SchedulingPolicy(ABC):
    """Ranks working-memory entries: the entry with the lowest priority is evicted first.

    Ties go to the least recently used, then the earliest admitted entry, so every policy is deterministic.
    A new policy is one subclass in its own file plus one YAML under conf/scheduler/.
    """

    name: str
    settings_class: type[Settings] = PolicySettings  # a policy with settings of its own names its dataclass

    @abstractmethod
    def priority(self, entry: Entry, context: TurnContext) -> float:
        """Higher stays longer."""


@dataclass(frozen=True)
class Budget(Settings):
    """Working-memory size: at most `max_items` entries and/or `max_tokens` tokens (None: unbounded)."""

    section: ClassVar[str] = "experiment.working_memory"
    instantiated: ClassVar[bool] = False
    max_items: int | None = 16
    max_tokens: int | None = None

    def validate(self) -> None:
        if self.max_items is None and self.max_tokens is None:
            raise ConfigError("working memory needs a budget: set max_items and/or max_tokens")
        positive_int(self, "max_items", "max_tokens")

    def exceeded(self, items: int, tokens: int) -> bool:
        return (self.max_items is not None and items > self.max_items) or (
            self.max_tokens is not None and tokens > self.max_tokens
        )


class WorkingMemory:
    """The bounded tier: admits and touches items at each step, then evicts by policy until within budget."""

    def __init__(
        self, policy: SchedulingPolicy, budget: Budget, token_counter: Callable[[str], int] = word_count
    ) -> None:
        if not isinstance(policy, SchedulingPolicy):
            raise ConfigError(f"scheduler policy must be a SchedulingPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.budget = budget
        self.count_tokens = token_counter
        self.now = 0
        self.context = TurnContext(now=0)
        self._entries: dict[str, Entry] = {}
        self._admissions = 0

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return sum(entry.tokens for entry in self._entries.values())

    def entries(self) -> list[Entry]:
        """In admission order, so that an assembled prompt changes only where the set changed."""
        return sorted(self._entries.values(), key=lambda entry: entry.order)

    def step(
        self,
        accessed: Sequence[MemoryItem],
        query: str | None = None,
        relevance: Mapping[str, float] | None = None,
    ) -> list[MemoryItem]:
        """One scheduler step: advance the clock, admit or touch `accessed`, rescore, evict; returns the evicted.

        `relevance` maps item ids to their similarity to `query` (missing ids count 0). The items
        accessed in this step are evicted only when the budget cannot hold even them.
        """
        self.now += 1
        for item in accessed:
            entry = self._entries.get(item.id)
            if entry is None:
                entry = self._admit(item)
            entry.use_times.append(self.now)
        for item_id, entry in self._entries.items():
            entry.relevance = float((relevance or {}).get(item_id, 0.0))
        self._set_context(query)
        return self._evict(pinned={item.id for item in accessed})

    def credit(self, item_ids: Sequence[str]) -> None:
        """Count a use without advancing the clock (an answer drew on these entries)."""
        for item_id in item_ids:
            if item_id in self._entries:
                self._entries[item_id].use_times.append(self.now)

    def drop(self, item_id: str) -> bool:
        """Remove an entry (its item was deleted or replaced in the store); True if it was present."""
        return self._entries.pop(item_id, None) is not None

    def ranked(self) -> list[Entry]:
        """Entries from the first to leave to the last."""
        return sorted(self._entries.values(), key=self._rank)

    def _admit(self, item: MemoryItem) -> Entry:
        self._admissions += 1
        entry = Entry(item, self.count_tokens(item.text), keywords(item.text), self.now, self._admissions)
        self._entries[item.id] = entry
        return entry

    def _set_context(self, query: str | None) -> None:
        max_uses = max((entry.uses for entry in self._entries.values()), default=0)
        self.context = TurnContext(self.now, keywords(query) if query else frozenset(), max_uses)

    def _rank(self, entry: Entry) -> tuple[float, int, int]:
        return (self.policy.priority(entry, self.context), entry.last_used_at, entry.order)

    def _evict(self, pinned: set[str]) -> list[MemoryItem]:
        evicted: list[MemoryItem] = []
        tokens = self.tokens
        # Unpinned entries leave first, each group in policy order.
        order = sorted(self._entries.values(), key=lambda entry: (entry.item.id in pinned, self._rank(entry)))
        for entry in order:
            if not self.budget.exceeded(len(self._entries), tokens):
                break
            del self._entries[entry.item.id]
            tokens -= entry.tokens
            evicted.append(entry.item)
        return evicted


class MemScheduler:
    """Drives one cube's working memory from the dialogue stream; attached to the MOS for add/update/delete.

    Events: `on_add` (through the MOS), `on_user_turn(text)` (retrieve `top_k`, admit, evict; returns the
    working memory to put into the prompt) and `on_answer(text)` (credit the entries the answer used).
    """

    section: ClassVar[str] = "scheduler"  # names `scheduler.top_k` in errors

    def __init__(
        self,
        mos: MOS,
        user: str,
        cube_id: str,
        policy: SchedulingPolicy,
        budget: Budget,
        top_k: int = 5,
        token_counter: Callable[[str], int] = word_count,
        admit_on_add: bool = True,
    ) -> None:
        self.top_k = top_k
        positive_int(self, "top_k")
        self.mos = mos
        self.user = user
        self.cube_id = cube_id
        self.admit_on_add = admit_on_add
        self.working = WorkingMemory(policy, budget, token_counter)
        self._embedder = mos.cube(user, cube_id).text.embedder
        self.evicted = 0  # evictions so far, for the experiment's churn metric
        mos.attach(self)

    def detach(self) -> None:
        self.mos.detach(self)

    # ---- events ---------------------------------------------------------------------------------

    def on_add(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        """New memories are the freshest context: admitted at once (unless admit_on_add is off)."""
        if cube_id != self.cube_id or not self.admit_on_add or not items:
            return
        vectors = [item.embedding for item in items if item.embedding is not None]
        # The added text is the current turn; its embedding is already there, no need to encode it again.
        vector = np.mean(vectors, axis=0) if vectors else self._query_vector(" ".join(item.text for item in items))
        self._step(list(items), " ".join(item.text for item in items), vector)

    def on_update(self, cube_id: str, old_id: str, new_item: MemoryItem) -> None:
        """The new version replaces the archived one in working memory (as a fresh entry)."""
        if cube_id == self.cube_id and self.working.drop(old_id):
            self.on_add(cube_id, [new_item])

    def on_delete(self, cube_id: str, item_id: str) -> None:
        if cube_id == self.cube_id:
            self.working.drop(item_id)

    def on_user_turn(self, text: str, vector: np.ndarray | None = None) -> list[MemoryItem]:
        """Retrieve for this turn, admit the hits, evict by policy; the working memory for the prompt.

        `vector` is the turn's embedding when the caller already has it (a turn that was just added).
        """
        hits = self.mos.search(self.user, text, top_k=self.top_k, cube_ids=[self.cube_id])
        self._step([hit.item for hit in hits], text, self._query_vector(text) if vector is None else vector)
        return self.memories()

    def on_answer(self, text: str) -> list[str]:
        """Credit the entries whose keywords the answer repeats; returns their ids."""
        said = keywords(text)
        used = [entry.item.id for entry in self.working.entries() if entry.keywords & said]
        self.working.credit(used)
        return used

    # ---- views ----------------------------------------------------------------------------------

    def memories(self) -> list[MemoryItem]:
        return [entry.item for entry in self.working.entries()]

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.working

    # ---- helpers --------------------------------------------------------------------------------

    def _query_vector(self, text: str) -> np.ndarray:
        return self._embedder.encode([text])[0]

    def _step(self, accessed: list[MemoryItem], query: str, vector: np.ndarray) -> None:
        accessed = [item for item in accessed if item.metadata.status == ACTIVE]
        relevance = {item.id: _cosine(vector, item.embedding) for item in [*self.memories(), *accessed]}
        self.evicted += len(self.working.step(accessed, query, relevance))


def _cosine(query: np.ndarray, vector: np.ndarray | None) -> float:
    # Embedders return L2-normalised vectors, so the dot product is the cosine.
    return 0.0 if vector is None else float(query @ vector)
