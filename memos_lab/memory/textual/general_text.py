"""`general_text`: unstructured text items searched lexically (BM25) and densely, the two fused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from memos_lab.memory.item import STATUSES, MemoryItem
from memos_lab.memory.textual.base import SearchFilter, SearchHit, TextualMemory
from memos_lab.memory.textual.lexical import Bm25Index, FusionSettings, reciprocal_rank_fusion
from memos_lab.memory.textual.stages import staged_search
from memos_lab.models.embedder import Embedder
from memos_lab.settings import non_negative, one_of

FUSIONS = ("rrf", "bm25", "dense")


@dataclass(frozen=True)
class GeneralTextSettings(FusionSettings):
    fusion: str = "rrf"  # rrf | bm25 | dense
    # >0: also rank items by their own text when a reader gave them a richer key (the committed
    # retrieval results ran with 0.5)
    text_weight: float = 0.5

    def validate(self) -> None:
        super().validate()
        one_of(self, "fusion", FUSIONS)
        non_negative(self, "text_weight")


class GeneralTextMemory(TextualMemory):
    """Flat store; scores every matching item exactly (no approximate index), fine up to ~10^5 items.

    fusion="rrf" fuses the BM25 and dense rankings by reciprocal rank (Cormack et al. 2009):
    score = w_lex / (rrf_k + rank_bm25) + w_dense / (rrf_k + rank_dense).
    The search stages (speaker, feedback, diversity, session_quota; see stages.py) re-rank the best `stage_pool`.
    """

    settings_class: type[GeneralTextSettings] = GeneralTextSettings
    settings: GeneralTextSettings

    def __init__(self, embedder: Embedder, **settings: Any) -> None:
        super().__init__(embedder)
        self.settings = self.settings_class.from_mapping(settings)
        s = self.settings
        self._row_ids: list[str] = []  # row i of the indexes holds item _row_ids[i]
        self._row_index: dict[str, int] = {}  # item id -> its row
        self._row_status = np.zeros(0, dtype=np.int8)  # each row's status, as its index in STATUSES
        self._matrix = np.zeros((0, embedder.dim), dtype=np.float32)
        self._bm25 = Bm25Index(s.bm25_k1, s.bm25_b, s.bm25_stemming)
        # With text_weight > 0, items whose key differs from their text are also ranked by the text alone.
        self._text_matrix = np.zeros((0, embedder.dim), dtype=np.float32)
        self._text_bm25 = Bm25Index(s.bm25_k1, s.bm25_b, s.bm25_stemming)
        self._has_keys = False

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        self._row_index.update((item.id, len(self._row_ids) + n) for n, item in enumerate(items))
        self._row_ids.extend(item.id for item in items)
        statuses = [STATUSES.index(item.metadata.status) for item in items]
        self._row_status = np.concatenate([self._row_status, np.asarray(statuses, dtype=np.int8)])
        self._matrix = np.vstack([self._matrix, np.stack(cast(list[np.ndarray], [item.embedding for item in items]))])
        self._bm25.add([self.key(item) for item in items])
        if self.settings.text_weight:
            keyed = [i for i, item in enumerate(items) if self.key(item) != item.text]
            self._has_keys = self._has_keys or bool(keyed)
            vectors = np.stack(cast(list[np.ndarray], [item.embedding for item in items]))
            if keyed:
                vectors[keyed] = self.embedder.encode([items[i].text for i in keyed])
            self._text_matrix = np.vstack([self._text_matrix, vectors])
            self._text_bm25.add([item.text for item in items])

    def _index_remove(self, item_ids: Sequence[str]) -> None:
        gone = set(item_ids)
        keep = [row for row, item_id in enumerate(self._row_ids) if item_id not in gone]
        dropped = [row for row, item_id in enumerate(self._row_ids) if item_id in gone]
        self._row_ids = [self._row_ids[row] for row in keep]
        self._row_index = {item_id: row for row, item_id in enumerate(self._row_ids)}
        self._row_status = self._row_status[keep]
        self._matrix = self._matrix[keep]
        self._bm25.remove(dropped)
        if self.settings.text_weight:
            self._text_matrix = self._text_matrix[keep]
            self._text_bm25.remove(dropped)

    def _on_replace(self, item: MemoryItem) -> None:
        self._row_status[self._row_index[item.id]] = STATUSES.index(item.metadata.status)

    def _search(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        return staged_search(self.settings, query, lambda k: self._ranked(query, k, search_filter), top_k)

    def _ranked(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        mask = self._filter_mask(search_filter)
        if not mask.any():
            return []
        scores = self._fused_scores(query, mask)
        scores[~mask] = -np.inf
        k = min(top_k, int(mask.sum()))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]  # rows a subclass ruled out
        return [SearchHit(self._items[self._row_ids[row]], float(scores[row])) for row in best]

    def _filter_mask(self, search_filter: SearchFilter) -> np.ndarray:
        """The rows the filter lets through; a filter on statuses alone (every search's default) is read off the
        rows' statuses without visiting each item."""
        if search_filter == SearchFilter(statuses=search_filter.statuses):
            return np.isin(self._row_status, [STATUSES.index(status) for status in search_filter.statuses])
        return np.fromiter(
            (search_filter.matches(self._items[item_id]) for item_id in self._row_ids), bool, len(self._row_ids)
        )

    def _fused_scores(self, query: str, mask: np.ndarray) -> np.ndarray:
        rankings = self._rankings(query, mask)
        if len(rankings) == 1:
            return rankings[0][1].astype(np.float64)
        return reciprocal_rank_fusion(rankings, mask, self.settings.rrf_k)

    def _rankings(self, query: str, mask: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(weight, one score per row) for each ranking to fuse; subclasses add structural rankings."""
        rankings = []
        if self.settings.fusion in ("rrf", "bm25"):
            rankings.append((self.settings.lexical_weight, self._bm25_scores(query)))
        if self.settings.fusion in ("rrf", "dense"):
            rankings.append((self.settings.dense_weight, self._dense_scores(query)))
        if self.settings.text_weight and self._has_keys:  # without keys the text rankings would repeat the others
            if self.settings.fusion in ("rrf", "bm25"):
                rankings.append(
                    (self.settings.text_weight * self.settings.lexical_weight, self._text_bm25.scores(query))
                )
            if self.settings.fusion in ("rrf", "dense"):
                dense = self._text_matrix @ self._query_vector(query)
                rankings.append((self.settings.text_weight * self.settings.dense_weight, dense))
        return rankings

    def _dense_scores(self, query: str) -> np.ndarray:
        return self._matrix @ self._query_vector(query)

    def _bm25_scores(self, query: str) -> np.ndarray:
        return self._bm25.scores(query)

    def index_nbytes(self) -> int:
        return self._matrix.nbytes + self._bm25.nbytes() + self._text_matrix.nbytes + self._text_bm25.nbytes()
