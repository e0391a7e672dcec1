"""BM25 over item keys and reciprocal-rank fusion, shared by the backends that mix lexical and dense search."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
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
    """BM25 over a list of texts (rows), kept current as texts are appended and removed.

    Each change updates the postings, document frequencies and lengths it touches; a search computes the scores
    of the query's terms from them (the IDF and the average length as they are now), so no change rebuilds the
    index. The scores are bm25s's (its default Lucene variant, English stopwords, float32) over the same texts,
    bit for bit (tested), and those of a fresh index over the same rows whatever changes led there.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, stemming: bool = False) -> None:
        self.k1 = k1
        self.b = b
        self._stemmer = light_stem if stemming else None
        self._slots: list[int] = []  # row -> slot; a slot names one stored text for good, rows shift on removal
        self._counts: dict[int, Counter[str]] = {}  # slot -> its tokens' counts
        self._lengths = np.zeros(0, dtype=np.float64)  # slot -> number of tokens (0 once removed)
        self._slot_rows = np.zeros(0, dtype=np.int64)  # slot -> row (-1 once removed)
        self._total_length = 0
        self._postings: dict[str, dict[int, int]] = {}  # token -> {slot: count}; tokens no text holds are dropped
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # token -> (slots, counts), until it changes

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, texts: Sequence[str]) -> None:
        """Append one row per text."""
        if not texts:
            return
        first = len(self._lengths)
        tokenized = bm25s.tokenize(list(texts), return_ids=False, stemmer=self._stemmer, show_progress=False)
        lengths = np.zeros(len(texts), dtype=np.float64)
        for offset, tokens in enumerate(tokenized):
            slot = first + offset
            counts = Counter(tokens)
            self._counts[slot] = counts
            lengths[offset] = len(tokens)
            for token, count in counts.items():
                self._postings.setdefault(token, {})[slot] = count
                self._arrays.pop(token, None)
        self._lengths = np.concatenate([self._lengths, lengths])
        self._slot_rows = np.concatenate([self._slot_rows, np.arange(len(self._slots), len(self._slots) + len(texts))])
        self._slots.extend(range(first, first + len(texts)))
        self._total_length += int(lengths.sum())

    def remove(self, rows: Sequence[int]) -> None:
        """Drop these rows; the rows after them move up."""
        gone = set(rows)
        for row in gone:
            slot = self._slots[row]
            for token in self._counts.pop(slot):
                postings = self._postings[token]
                del postings[slot]
                if not postings:
                    del self._postings[token]
                self._arrays.pop(token, None)
            self._total_length -= int(self._lengths[slot])
            self._lengths[slot] = 0
        self._slots = [slot for row, slot in enumerate(self._slots) if row not in gone]
        self._slot_rows[:] = -1
        self._slot_rows[self._slots] = np.arange(len(self._slots))

    def scores(self, query: str) -> np.ndarray:
        """One score per row."""
        scores = np.zeros(len(self._slots), dtype=np.float32)
        query_tokens = bm25s.tokenize([query], return_ids=False, stemmer=self._stemmer, show_progress=False)[0]
        known = [token for token in query_tokens if token in self._postings]
        if not known:
            return scores
        n_docs = len(self._slots)
        average_length = np.float64(self._total_length) / n_docs  # as bm25s's mean of the lengths
        for token in known:  # each occurrence counts, as in bm25s
            slots, counts = self._postings_arrays(token)
            df = len(slots)
            idf = np.float32(math.log(1 + (n_docs - df + 0.5) / (df + 0.5)))
            # bm25s's term-frequency component in its evaluation order and precision; each term's score is float32
            tfc = counts / (self.k1 * ((1 - self.b) + self.b * self._lengths[slots] / average_length) + counts)
            scores[self._slot_rows[slots]] += (idf * tfc).astype(np.float32)
        return scores

    def _postings_arrays(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays.get(token)
        if arrays is None:
            postings = self._postings[token]
            slots = np.fromiter(postings.keys(), np.int64, len(postings))
            counts = np.fromiter(postings.values(), np.float64, len(postings))
            arrays = self._arrays[token] = (slots, counts)
        return arrays

    def nbytes(self) -> int:
        """Bytes of the postings as bm25s would hold them (a float32 score and an int32 row each, an int64 offset
        per term, and one), so cost figures stay comparable with those measured before."""
        entries = sum(len(postings) for postings in self._postings.values())
        return 8 * entries + 8 * (len(self._postings) + 1) if self._slots else 0


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
    order = np.argsort(-scores, kind="stable")
    ordered = -scores[order]
    starts = np.ones(len(ordered), dtype=bool)  # where a run of equal scores begins
    starts[1:] = ordered[1:] != ordered[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(ordered)), 0))  # each entry's run start
    result = np.empty(len(ordered), dtype=np.float64)
    result[order] = first + 1
    return result  # scipy's rankdata(-scores, method="min"), without its per-call overhead (tested equal)


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
