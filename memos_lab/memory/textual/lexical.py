"""BM25 over item keys and reciprocal-rank fusion, shared by the backends that mix lexical and dense search."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import bm25s
import numpy as np

from memos_lab.memory.textual.stages import SearchStages
from memos_lab.settings import non_negative, non_negative_int

# bm25s sets its own logger to DEBUG on import and logs every index build; keep runs readable.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class FusionSettings(SearchStages):
    """The lexical + dense fusion settings every text backend shares, and the search stages after it."""

    section: ClassVar[str] = "memory"
    rrf_k: int = 60  # reciprocal rank fusion: score = w / (rrf_k + rank)
    lexical_weight: float = 1.0
    dense_weight: float = 1.0
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    bm25_stemming: bool = False  # strip plural, -ing and -ed suffixes before BM25

    def validate(self) -> None:
        super().validate()
        non_negative_int(self, "rrf_k")
        non_negative(self, "lexical_weight", "dense_weight", "bm25_k1", "bm25_b")


class Bm25Index:
    """BM25 scores over a list of texts, rebuilt lazily after the corpus changes."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, stemming: bool = False) -> None:
        self.k1 = k1
        self.b = b
        self._stemmer = light_stem if stemming else None
        self._bm25: bm25s.BM25 | None = None
        self._size = 0

    def invalidate(self) -> None:
        self._bm25 = None

    def scores(self, query: str, corpus: Callable[[], Sequence[str]]) -> np.ndarray:
        """One score per text of `corpus()` (called only when the index must be rebuilt)."""
        if self._bm25 is None:
            texts = corpus()
            self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            tokens = bm25s.tokenize(list(texts), stemmer=self._stemmer, show_progress=False)
            self._bm25.index(tokens, show_progress=False)
            self._size = len(texts)
        query_tokens = bm25s.tokenize([query], return_ids=False, stemmer=self._stemmer, show_progress=False)[0]
        known = [token for token in query_tokens if token in self._bm25.vocab_dict]
        if not known:
            return np.zeros(self._size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)

    def nbytes(self) -> int:
        if self._bm25 is None:
            return 0
        return sum(np.asarray(array).nbytes for array in self._bm25.scores.values() if hasattr(array, "nbytes"))


def light_stem(tokens: Sequence[str]) -> list[str]:
    """A small English suffix stripper (plurals, -ing, -ed), so "painting" meets "painted" and "paints"."""
    return [_stem(token) for token in tokens]


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix, keep in (("ing", 4), ("ed", 4), ("es", 4), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every entry, best first; tied scores share the best of their ranks, so the order
    items were stored in never decides between equally scored ones."""
    from scipy.stats import rankdata

    return rankdata(-scores, method="min").astype(np.float64)


def reciprocal_rank_fusion(rankings: Sequence[tuple[float, np.ndarray]], mask: np.ndarray, rrf_k: float) -> np.ndarray:
    """sum_i w_i / (rrf_k + rank_i) over the rows `mask` allows (Cormack et al. 2009); -inf scores rank nowhere."""
    fused = np.zeros(len(mask), dtype=np.float64)
    for weight, scores in rankings:
        if weight:
            masked = np.where(mask, scores, -np.inf)
            # -inf means "not in this ranking": no credit from it
            fused += np.where(np.isfinite(masked), weight / (rrf_k + ranks(masked)), 0.0)
    return fused


def fuse_ranked_lists(lists: Sequence[tuple[float, Sequence[str]]], rrf_k: float) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of ranked id lists (an id absent from a list gets nothing from it), best first."""
    fused: dict[str, float] = {}
    for weight, ranked in lists:
        for rank, key in enumerate(ranked, 1):
            fused[key] = fused.get(key, 0.0) + weight / (rrf_k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])
