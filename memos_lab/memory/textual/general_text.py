"""`general_text`: unstructured text items searched lexically (BM25) and densely, the two fused."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

from memos_lab.errors import ConfigError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.base import SearchFilter, SearchHit, TextualMemory
from memos_lab.models.embedder import Embedder

FUSIONS = ("rrf", "bm25", "dense")
# bm25s sets its own logger to DEBUG on import and logs every index build; keep runs readable.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class GeneralTextMemory(TextualMemory):
    """Flat store; scores every matching item exactly (no approximate index), fine up to ~10^5 items.

    fusion="rrf" fuses the BM25 and dense rankings by reciprocal rank (Cormack et al. 2009):
    score = w_lex / (rrf_k + rank_bm25) + w_dense / (rrf_k + rank_dense).
    """

    def __init__(
        self,
        embedder: Embedder,
        fusion: str = "rrf",
        rrf_k: int = 60,
        lexical_weight: float = 1.0,
        dense_weight: float = 1.0,
        bm25_k1: float = 1.5,
        bm25_b: float = 0.75,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"memory.fusion: unknown {fusion!r}; valid: {list(FUSIONS)}")
        numbers = {"rrf_k": rrf_k, "lexical_weight": lexical_weight, "dense_weight": dense_weight,
                   "bm25_k1": bm25_k1, "bm25_b": bm25_b}  # fmt: skip
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"memory.{name} must be a non-negative number, got {value!r}")
        super().__init__(embedder)
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.lexical_weight = lexical_weight
        self.dense_weight = dense_weight
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self._row_ids: list[str] = []  # row i of the indexes holds item _row_ids[i]
        self._matrix = np.zeros((0, embedder.dim), dtype=np.float32)
        self._bm25: bm25s.BM25 | None = None  # rebuilt lazily after the corpus changes

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        self._row_ids.extend(item.id for item in items)
        self._matrix = np.vstack([self._matrix, np.stack([item.embedding for item in items])])
        self._bm25 = None

    def _index_remove(self, item_ids: Sequence[str]) -> None:
        gone = set(item_ids)
        keep = [row for row, item_id in enumerate(self._row_ids) if item_id not in gone]
        self._row_ids = [self._row_ids[row] for row in keep]
        self._matrix = self._matrix[keep]
        self._bm25 = None

    def _search(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        mask = np.fromiter(
            (search_filter.matches(self._items[item_id]) for item_id in self._row_ids), bool, len(self._row_ids)
        )
        if not mask.any():
            return []
        scores = self._fused_scores(query, mask)
        scores[~mask] = -np.inf
        k = min(top_k, int(mask.sum()))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [SearchHit(self._items[self._row_ids[row]], float(scores[row])) for row in best]

    def _fused_scores(self, query: str, mask: np.ndarray) -> np.ndarray:
        if self.fusion == "bm25":
            return self._bm25_scores(query)
        if self.fusion == "dense":
            return self._dense_scores(query)
        fused = np.zeros(len(self._row_ids), dtype=np.float64)
        for weight, scores in ((self.lexical_weight, self._bm25_scores(query)), (self.dense_weight, self._dense_scores(query))):
            fused += weight / (self.rrf_k + _ranks(np.where(mask, scores, -np.inf)))
        return fused

    def _dense_scores(self, query: str) -> np.ndarray:
        return self._matrix @ self.embedder.encode([query])[0]

    def _bm25_scores(self, query: str) -> np.ndarray:
        if self._bm25 is None:
            self._bm25 = bm25s.BM25(k1=self.bm25_k1, b=self.bm25_b)
            corpus = [self._items[item_id].text for item_id in self._row_ids]
            self._bm25.index(bm25s.tokenize(corpus, show_progress=False), show_progress=False)
        query_tokens = bm25s.tokenize([query], return_ids=False, show_progress=False)[0]
        known = [token for token in query_tokens if token in self._bm25.vocab_dict]
        if not known:
            return np.zeros(len(self._row_ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every entry, best first; ties broken by position so fusion is deterministic."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks
