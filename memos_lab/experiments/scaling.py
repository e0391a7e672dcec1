"""Scaling experiment: how search latency, index memory and ingest speed grow with the store.

Builds a store of `experiment.size` synthetic items (their vectors precomputed: random unit vectors or
the embedder's), then times `queries` searches through the public API with the query vectors encoded
beforehand, so the numbers are the index's own cost. Separately, `ingest_items_per_s` times add()
with the configured embedder on `ingest_sample` fresh items (what loading real text costs).
`deleted_fraction` soft-deletes that share of the store (chosen at random) before the searches are timed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import hydra.utils
import numpy as np
from omegaconf import DictConfig

from memos_lab.eval.retrieval import latency_percentiles
from memos_lab.experiments.common import ExperimentSettings
from memos_lab.loggers.base import Tracker
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.models.embedder import Embedder
from memos_lab.settings import in_range, one_of, positive_int, uses_settings

PREFIX = "scaling/"
NAMES = ["Ana", "Ben", "Caroline", "Dev", "Eva", "Farid", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena"]
VERBS = ["visited", "painted", "bought", "cooked", "found", "lost", "fixed", "sold", "planted", "read"]
NOUNS = ["a bicycle", "the garden", "a guitar", "some bread", "a kite", "the roof", "a novel", "tulips", "a map"]
PLACES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Quebec", "Perth", "Tartu", "Bergen", "Cusco"]


def synthetic_texts(rng: np.random.Generator, count: int, start: int = 0) -> list[str]:
    picks = [rng.integers(0, len(words), count) for words in (NAMES, VERBS, NOUNS, PLACES)]
    return [
        f"{NAMES[a]} {VERBS[b]} {NOUNS[c]} in {PLACES[d]} (note {start + i})"
        for i, (a, b, c, d) in enumerate(zip(*picks, strict=False))
    ]


class _KnownQueries(Embedder):
    """Returns pre-encoded vectors for the benchmark's queries, so search timing excludes the embedder."""

    def __init__(self, inner: Embedder, queries: Sequence[str]) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self._known = dict(zip(queries, inner.encode(list(queries)), strict=False))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if all(text in self._known for text in texts):
            return np.stack([self._known[text] for text in texts])
        return self.inner.encode(texts)


@dataclass(frozen=True)
class ScalingSettings(ExperimentSettings):
    size: int = 10000  # items in the store
    vectors: str = "random"  # random: unit vectors (fast to make at any size) | embedder: the embedder's own vectors
    queries: int = 200
    top_k: int = 10
    batch_size: int = 5000  # items per add() call while building
    ingest_sample: int = 1000  # items added through the embedder to time end-to-end ingest
    deleted_fraction: float = 0.0  # share of the store soft-deleted (at random) before the searches are timed

    def validate(self) -> None:
        one_of(self, "vectors", ("random", "embedder"))
        positive_int(self, "size", "queries", "top_k", "batch_size", "ingest_sample")
        in_range(self, "deleted_fraction", 0.0, 0.99)  # deleting everything leaves nothing to search


@uses_settings(ScalingSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = ScalingSettings.from_mapping(cfg.experiment)
    size, n_queries, vectors, deleted_fraction = exp.size, exp.queries, exp.vectors, exp.deleted_fraction
    rng = np.random.default_rng(int(cfg.seed))
    embedder = hydra.utils.instantiate(cfg.embedder)
    texts = synthetic_texts(rng, size)
    queries = [f"what did {q.split(' (')[0]}" for q in synthetic_texts(rng, n_queries, start=size)]
    known = _KnownQueries(embedder, queries)
    memory = hydra.utils.instantiate(cfg.memory, embedder=known)

    batch = exp.batch_size
    build_s = 0.0
    item_ids: list[str] = []
    for start in range(0, size, batch):
        chunk = texts[start : start + batch]
        if vectors == "random":
            matrix = rng.standard_normal((len(chunk), embedder.dim)).astype(np.float32)
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        else:
            matrix = embedder.encode(chunk)
        items = [
            MemoryItem(text, MemoryMetadata(session=f"s{(start + i) // 20}"), embedding=vector)
            for i, (text, vector) in enumerate(zip(chunk, matrix, strict=False))
        ]
        started = time.perf_counter()
        item_ids += memory.add(items)
        build_s += time.perf_counter() - started
        tracker.log({"scaling/items": start + len(chunk)})
    for row in rng.choice(size, round(deleted_fraction * size), replace=False):
        memory.delete(item_ids[row])
    memory.search(queries[0], 10)  # lazy structures (BM25, IVF training, tree nodes) are built here, once

    search_ms = []
    for query in queries:
        started = time.perf_counter()
        memory.search(query, exp.top_k)
        search_ms.append((time.perf_counter() - started) * 1000)

    sample = synthetic_texts(rng, exp.ingest_sample, start=size + n_queries)
    fresh = hydra.utils.instantiate(cfg.memory, embedder=embedder)
    started = time.perf_counter()
    fresh.add(sample)
    ingest_s = time.perf_counter() - started

    metrics = latency_percentiles(search_ms, f"{PREFIX}search_ms")
    metrics[f"{PREFIX}index_mb"] = memory.index_nbytes() / 2**20
    metrics[f"{PREFIX}build_items_per_s"] = size / build_s if build_s else 0.0  # indexing only, vectors given
    metrics[f"{PREFIX}ingest_items_per_s"] = len(sample) / ingest_s if ingest_s else 0.0  # with the embedder
    metrics[f"{PREFIX}items"] = size
    metrics[f"{PREFIX}deleted_fraction"] = float(deleted_fraction)
    return metrics
