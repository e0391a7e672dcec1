"""`tree_text`: items grouped under topic nodes and session nodes, each parent with a centroid and a summary.

Topics come from k-means over the item embeddings (about `leaf_size` items each), sessions from the items'
metadata; summaries are extractive (the members nearest the centroid), so no language model is needed.
Search descends softly: an item's dense score is its own similarity plus its parents' similarity to the
query (`topic_weight`, `session_weight`), fused with BM25 as in general_text; `beam` > 0 descends hard,
keeping only items under the `beam` best topics. `context(item_id)` returns an item's parents.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from memos_lab.artifact import read_json_file
from memos_lab.errors import DataError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.general_text import GeneralTextMemory, GeneralTextSettings
from memos_lab.models.embedder import Embedder
from memos_lab.settings import non_negative, non_negative_int, positive_int

TREE_FILE = "tree.json"
NO_SESSION = "(no session)"


@dataclass(frozen=True)
class TreeNode:
    node_id: str  # "topic:3" or "session:<session id>"
    item_ids: tuple[str, ...]
    summary: str
    centroid: np.ndarray


@dataclass(frozen=True)
class TreeTextSettings(GeneralTextSettings):
    leaf_size: int = 16  # items per topic, on average
    topic_weight: float = 0.3  # the topic's similarity added to an item's dense score
    session_weight: float = 0.3  # the session's similarity added to an item's dense score
    beam: int = 0  # >0: search only under the `beam` best topics (hard descent)
    summary_items: int = 2  # members nearest the centroid that make a node's summary
    seed: int = 0  # k-means

    def validate(self) -> None:
        super().validate()
        positive_int(self, "leaf_size", "summary_items")
        non_negative_int(self, "beam")
        non_negative(self, "topic_weight", "session_weight")


class TreeTextMemory(GeneralTextMemory):
    settings_class = TreeTextSettings
    settings: TreeTextSettings

    def __init__(self, embedder: Embedder, **settings: Any) -> None:
        super().__init__(embedder, **settings)
        self._topic_of: dict[str, int] = {}  # item id -> topic number
        self._clustered_size = 0  # store size at the last full clustering
        self._nodes: dict[str, TreeNode] | None = None  # built lazily after changes

    # ---- the hierarchy --------------------------------------------------------------------------

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        super()._index_add(items)
        if len(self._row_ids) > 2 * self._clustered_size:
            self._cluster()  # the store doubled: re-cluster everything
        else:
            centroids = self._topic_centroids()
            for item in items:  # otherwise new items join their nearest topic
                self._topic_of[item.id] = int(np.argmax(centroids @ item.embedding))
        self._nodes = None

    def _index_remove(self, item_ids: Sequence[str]) -> None:
        super()._index_remove(item_ids)
        for item_id in item_ids:
            self._topic_of.pop(item_id, None)
        self._nodes = None

    def _on_replace(self, item: MemoryItem) -> None:
        super()._on_replace(item)
        self._nodes = None  # session membership may change with metadata

    def _cluster(self) -> None:
        n = len(self._row_ids)
        k = max(1, round(n / self.settings.leaf_size))
        if k == 1:
            labels = np.zeros(n, dtype=np.int64)
        else:
            kmeans = faiss.Kmeans(
                self.embedder.dim, k, niter=20, seed=self.settings.seed, spherical=True, min_points_per_centroid=1
            )
            kmeans.train(self._matrix)
            labels = kmeans.index.search(self._matrix, 1)[1][:, 0]
        self._topic_of = {item_id: int(label) for item_id, label in zip(self._row_ids, labels, strict=False)}
        self._clustered_size = n

    def _topic_centroids(self) -> np.ndarray:
        topics = max(self._topic_of.values(), default=0) + 1
        rows = {item_id: row for row, item_id in enumerate(self._row_ids)}
        centroids = np.zeros((topics, self.embedder.dim), dtype=np.float32)
        for item_id, topic in self._topic_of.items():
            centroids[topic] += self._matrix[rows[item_id]]
        return _normalised(centroids)

    def nodes(self) -> dict[str, TreeNode]:
        """Every parent node (topics and sessions), built from the current items."""
        if self._nodes is None:
            groups: dict[str, list[int]] = {}
            for row, item_id in enumerate(self._row_ids):
                groups.setdefault(f"topic:{self._topic_of[item_id]}", []).append(row)
                session = self._items[item_id].metadata.session or NO_SESSION
                groups.setdefault(f"session:{session}", []).append(row)
            self._nodes = {node_id: self._node(node_id, rows) for node_id, rows in groups.items()}
        return self._nodes

    def _node(self, node_id: str, rows: list[int]) -> TreeNode:
        centroid = _normalised(self._matrix[rows].sum(axis=0, keepdims=True))[0]
        nearest = np.argsort(-(self._matrix[rows] @ centroid), kind="stable")[: self.settings.summary_items]
        summary = " … ".join(self._items[self._row_ids[rows[i]]].text for i in sorted(nearest))
        return TreeNode(node_id, tuple(self._row_ids[row] for row in rows), summary, centroid)

    def context(self, item_id: str) -> list[TreeNode]:
        """The item's parents: its topic and its session, as context for whoever reads the hit."""
        item = self.get(item_id)
        nodes = self.nodes()
        return [nodes[f"topic:{self._topic_of[item_id]}"], nodes[f"session:{item.metadata.session or NO_SESSION}"]]

    # ---- search ---------------------------------------------------------------------------------

    def _parent_similarity(self, query_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the query's similarity to the row's topic centroid and to its session centroid."""
        similarity = {node_id: float(node.centroid @ query_vector) for node_id, node in self.nodes().items()}
        topic = [similarity[f"topic:{self._topic_of[item_id]}"] for item_id in self._row_ids]
        session = [similarity[f"session:{self._items[i].metadata.session or NO_SESSION}"] for i in self._row_ids]
        return np.array(topic), np.array(session)

    def _dense_scores(self, query: str) -> np.ndarray:
        query_vector = self._query_vector(query)
        topic, session = self._parent_similarity(query_vector)
        return self._matrix @ query_vector + self.settings.topic_weight * topic + self.settings.session_weight * session

    def _fused_scores(self, query: str, mask: np.ndarray) -> np.ndarray:
        if not self.settings.beam:
            return super()._fused_scores(query, mask)
        topic, _ = self._parent_similarity(self._query_vector(query))
        best = np.unique(topic[mask])[::-1][: self.settings.beam]
        inside = mask & (topic >= best[-1])
        scores = super()._fused_scores(query, inside)
        scores[~inside] = -np.inf
        return scores

    # ---- persistence ----------------------------------------------------------------------------

    def _save_index(self, folder: Path) -> None:
        (folder / TREE_FILE).write_text(
            json.dumps({"clustered_size": self._clustered_size, "topic_of": self._topic_of})
        )

    def _load_index(self, folder: Path, items: Sequence[MemoryItem]) -> None:
        try:
            tree = read_json_file(folder / TREE_FILE)
            topic_of = {str(k): int(v) for k, v in tree["topic_of"].items()}
            clustered_size = int(tree["clustered_size"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{folder / TREE_FILE}: unreadable tree ({error})") from None
        if set(topic_of) != {item.id for item in items}:
            raise DataError(f"{folder / TREE_FILE}: does not match the cube's items")
        if items:
            GeneralTextMemory._index_add(self, items)  # rows only: the stored topics are kept, not re-clustered
        self._topic_of, self._clustered_size, self._nodes = topic_of, clustered_size, None

    def index_nbytes(self) -> int:
        return super().index_nbytes() + sum(node.centroid.nbytes for node in self.nodes().values())


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
