"""What every adapter of another memory system shares.

`TextualMemory` keeps the items and their lifecycle (versions, soft delete, filters); a peer system keeps
its own index over them. The peer is asked for more than `top_k` hits and memos_lab's filter is applied
to what it returns, so filters mean the same on every backend. A peer that rewrites what it is given
(LLM extraction) returns memories of its own instead of the stored items: `returns_stored_items` is then
False, and experiments report no evidence-based metric for it.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from memos_lab.errors import MemosError
from memos_lab.memory.textual.base import SearchFilter, SearchHit, TextualMemory
from memos_lab.settings import Settings, positive_int

MAX_POOL_ROUNDS = 6  # the candidate pool doubles at most this often before the filter's survivors are taken


@dataclass(frozen=True)
class PeerSettings(Settings):
    section: ClassVar[str] = "memory"
    search_pool: int = 4  # ask the peer for top_k times this many hits, then apply memos_lab's filter

    def validate(self) -> None:
        positive_int(self, "search_pool")


class PeerMemory(TextualMemory):
    system: ClassVar[str]  # the peer's distribution name, for provenance ("mem0ai")
    settings: PeerSettings

    @abstractmethod
    def system_info(self) -> dict[str, str]:
        """The peer's name, version and the settings that decide what it does, for provenance and reports."""

    @abstractmethod
    def _peer_search(self, query: str, limit: int) -> list[SearchHit]:
        """The peer's own best `limit` hits, best first, before memos_lab's filter."""

    def _search(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        limit = top_k * self.settings.search_pool
        kept: list[SearchHit] = []
        for _ in range(MAX_POOL_ROUNDS):
            hits = self._peer_search(query, limit)
            kept = [hit for hit in hits if search_filter.matches(hit.item)]
            if len(kept) >= top_k or len(hits) < limit:
                break
            limit *= 2
        return kept[:top_k]

    def unsupported(self, operation: str, why: str) -> MemosError:
        return MemosError(f"{self.system}: {operation} is not possible here: {why}")
