"""The activation tier's eviction, ranked by the scheduler's own policy.

Plugs into the activation memory's `EvictionPolicy` interface: each KV cache of an assembled working
memory is scored like a working-memory entry whose text is the memories it holds, with the same clock,
use history and current-turn context, so `scheduler=lfu` evicts the least used cache, `relevance` the one
least related to the current turn, and so on. A memory's own cache (a chunk) ranks as its memory does in
working memory, and goes first once the memory has left it; the shared header's cache goes last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memos_lab.memory.activation.base import EntryStats, EvictionPolicy
from memos_lab.memory.item import MemoryItem
from memos_lab.scheduler.base import Entry, WorkingMemory, keywords


class PolicyEviction(EvictionPolicy):
    def __init__(self, working: WorkingMemory) -> None:
        self.working = working
        self._entries: dict[str, Entry] = {}
        self._members: dict[str, tuple[str, ...]] = {}

    def record(self, key: str, items: Sequence[MemoryItem], tokens: int) -> None:
        """A cache of `items` was stored or used under `key` at the working memory's current step."""
        entry = self._entries.get(key)
        if entry is None:
            text = "\n".join(item.text for item in items)
            entry = Entry(MemoryItem(text, id=key), tokens, keywords(text), self.working.now, len(self._entries) + 1)
            self._entries[key] = entry
            self._members[key] = tuple(item.id for item in items)
        entry.use_times.append(self.working.now)

    def victims(self, entries: Sequence[EntryStats], bytes_to_free: int) -> list[str]:
        chosen, freed = [], 0
        for stats in sorted(entries, key=self._rank):
            if freed >= bytes_to_free:
                break
            chosen.append(stats.key)
            freed += stats.nbytes
            self._entries.pop(stats.key, None)
            self._members.pop(stats.key, None)
        return chosen

    def _rank(self, stats: EntryStats) -> tuple[float, int, int]:
        entry = self._entries.get(stats.key)
        if entry is None and stats.kind == "header":  # every composition starts from it
            return (np.inf, stats.last_used, stats.created)
        if entry is None and stats.kind == "chunk" and len(stats.items) == 1:
            working = {e.item.id: e for e in self.working.entries()}
            member = working.get(stats.items[0])
            if member is not None:
                return (self.working.policy.priority(member, self.working.context), stats.last_used, stats.created)
        if entry is None:  # stored behind our back, or its memory left working memory: the first to go
            return (-np.inf, stats.last_used, stats.created)
        # A cache is as relevant as its memories are to the current turn on average.
        relevance = {e.item.id: e.relevance for e in self.working.entries()}
        members = self._members[stats.key]
        entry.relevance = float(np.mean([relevance.get(i, 0.0) for i in members])) if members else 0.0
        return (self.working.policy.priority(entry, self.working.context), entry.last_used_at, entry.order)
