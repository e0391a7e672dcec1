"""`graph`: entities and relations linked to the items that mention them, in a networkx graph.

Nodes are items (`item:<id>`) and entities (`entity:<name>`, capitalised names found in the item's key,
plus, with `terms`, its content words). Edges: an item `mentions` an entity; two entities mentioned by
one item `co_occur` (weighted by count); consecutive items of a session are linked by `next`.
Search fuses BM25 and dense rankings with an entity ranking: the query's entities score the items that
mention them (weighted by rarity; entities in more than `max_entity_share` of the items, like the
speakers of a dialogue, are skipped), their co-occurring neighbours score `expansion_weight` as much; then
every item gains `neighbour_weight` times the best score of its `next`-linked items.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from memos_lab.artifact import read_json_file
from memos_lab.errors import DataError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.general_text import GeneralTextMemory, GeneralTextSettings
from memos_lab.models.embedder import Embedder
from memos_lab.settings import non_negative, probability

GRAPH_FILE = "graph.json"
_NAME = re.compile(r"\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*")
_SENTENCE_START = re.compile(r"(^|[.!?:]\s*|\n)\s*$")
_WORD = re.compile(r"[a-z][a-z'-]{3,}")


def extract_entities(text: str, terms: bool = False) -> set[str]:
    """Capitalised names ("Caroline", "New York"), lower-cased; with `terms`, content words too."""
    found: set[str] = set()
    for match in _NAME.finditer(text):
        words = [w for w in match.group().lower().split() if w not in ENGLISH_STOP_WORDS]
        runs = [words]
        if len(words) > 1 and _SENTENCE_START.search(text[: match.start()]):
            runs.append(words[1:])  # "Yesterday Caroline ...": the first word may be capitalised only by position
        found.update(" ".join(run) for run in runs if run and len(" ".join(run)) > 1)
    if terms:
        found.update(w.removesuffix("'s") for w in _WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS)
    return found


@dataclass(frozen=True)
class GraphSettings(GeneralTextSettings):
    entity_weight: float = 1.0  # weight of the entity ranking in the fusion (0 turns the graph off)
    expansion_weight: float = 0.3  # credit for entities one co-occurrence hop from the query's
    neighbour_weight: float = 0.0  # share of the best `next`-linked item's score an item gains
    max_entity_share: float = 0.05  # entities named in more of the items than this share (speakers) rank nothing
    terms: bool = False  # also link content words, not only capitalised names

    def validate(self) -> None:
        super().validate()
        non_negative(self, "entity_weight", "expansion_weight", "neighbour_weight")
        probability(self, "max_entity_share")


class GraphMemory(GeneralTextMemory):
    settings_class = GraphSettings
    settings: GraphSettings

    def __init__(self, embedder: Embedder, **settings: Any) -> None:
        super().__init__(embedder, **settings)
        self.graph = nx.Graph()
        self._last_of_session: dict[str, str] = {}  # session -> its latest item, to link the next one
        self._row_of: dict[str, int] | None = None

    # ---- building the graph ---------------------------------------------------------------------

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        super()._index_add(items)
        for item in items:
            node = f"item:{item.id}"
            self.graph.add_node(node, kind="item")
            entities = sorted(extract_entities(self.key(item), self.settings.terms))
            for entity in entities:
                self.graph.add_node(f"entity:{entity}", kind="entity")
                self.graph.add_edge(node, f"entity:{entity}", relation="mentions")
            for i, a in enumerate(entities):
                for b in entities[i + 1 :]:
                    edge = self.graph.get_edge_data(f"entity:{a}", f"entity:{b}", {"weight": 0})
                    self.graph.add_edge(f"entity:{a}", f"entity:{b}", relation="co_occurs", weight=edge["weight"] + 1)
            session = item.metadata.session
            if session is not None:
                previous = self._last_of_session.get(session)
                if previous is not None and self.graph.has_node(f"item:{previous}"):
                    self.graph.add_edge(f"item:{previous}", node, relation="next")
                self._last_of_session[session] = item.id
        self._row_of = None

    def _index_remove(self, item_ids: Sequence[str]) -> None:
        super()._index_remove(item_ids)
        for item_id in item_ids:
            entities = [n for n in self.graph.neighbors(f"item:{item_id}") if n.startswith("entity:")]
            self.graph.remove_node(f"item:{item_id}")
            # Entities no item mentions any more go too (co-occurrence counts are kept as history).
            self.graph.remove_nodes_from(
                [e for e in entities if not any(n.startswith("item:") for n in self.graph.neighbors(e))]
            )
        self._row_of = None

    # ---- search ---------------------------------------------------------------------------------

    def _rankings(self, query: str, mask: np.ndarray) -> list[tuple[float, np.ndarray]]:
        rankings = super()._rankings(query, mask)
        if self.settings.entity_weight:
            rankings.append((self.settings.entity_weight, self._entity_scores(query)))
        return rankings

    def _fused_scores(self, query: str, mask: np.ndarray) -> np.ndarray:
        scores = super()._fused_scores(query, mask)
        if not self.settings.neighbour_weight:
            return scores
        masked = np.where(mask, scores, -np.inf)
        boosted = scores.copy()
        rows = self._rows()
        for row, item_id in enumerate(self._row_ids):
            neighbours = [rows[n[5:]] for n in self.graph.neighbors(f"item:{item_id}") if n.startswith("item:")]
            if neighbours:
                boosted[row] += self.settings.neighbour_weight * max(0.0, float(masked[neighbours].max()))
        return boosted

    def query_entities(self, query: str) -> dict[str, float]:
        """Entities of the query (weight 1) and their co-occurring neighbours (`expansion_weight`)."""
        words = set(re.findall(r"[a-z0-9][\w-]*", query.lower()))
        named = {e for e in extract_entities(query, self.settings.terms) if self.graph.has_node(f"entity:{e}")}
        named |= {e for e in words if self.graph.has_node(f"entity:{e}")}
        weights = {f"entity:{e}": 1.0 for e in named}
        if self.settings.expansion_weight:
            for entity in list(weights):
                edges = [(n, d["weight"]) for n, d in self.graph[entity].items() if n.startswith("entity:")]
                total = sum(weight for _, weight in edges) or 1
                for neighbour, weight in edges:
                    if neighbour not in weights or weights[neighbour] < 1.0:
                        weights[neighbour] = (
                            weights.get(neighbour, 0.0) + self.settings.expansion_weight * weight / total
                        )
        return weights

    def _entity_scores(self, query: str) -> np.ndarray:
        scores = np.zeros(len(self._row_ids), dtype=np.float64)
        rows = self._rows()
        common = max(1.0, self.settings.max_entity_share * len(rows))
        for entity, weight in self.query_entities(query).items():
            mentions = [n[5:] for n in self.graph.neighbors(entity) if n.startswith("item:")]
            if len(mentions) > common:
                continue  # named in most items (the speakers of a dialogue): no evidence either way
            rarity = math.log(1 + len(rows) / max(1, len(mentions)))
            for item_id in mentions:
                scores[rows[item_id]] += weight * rarity
        return np.where(scores > 0, scores, -np.inf)  # items without query entities get no credit

    def _rows(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {item_id: row for row, item_id in enumerate(self._row_ids)}
        return self._row_of

    # ---- persistence and cost -------------------------------------------------------------------

    def _save_index(self, folder: Path) -> None:
        data = {"graph": nx.node_link_data(self.graph, edges="edges"), "last_of_session": self._last_of_session}
        (folder / GRAPH_FILE).write_text(json.dumps(data))

    def _load_index(self, folder: Path, items: Sequence[MemoryItem]) -> None:
        try:
            data = read_json_file(folder / GRAPH_FILE)
            graph = nx.node_link_graph(data["graph"], edges="edges")
            last_of_session = {str(k): str(v) for k, v in data["last_of_session"].items()}
        except (OSError, ValueError, KeyError, TypeError, nx.NetworkXError) as error:
            raise DataError(f"{folder / GRAPH_FILE}: unreadable graph ({error})") from None
        if {n[5:] for n in graph if n.startswith("item:")} != {item.id for item in items}:
            raise DataError(f"{folder / GRAPH_FILE}: does not match the cube's items")
        if items:
            GeneralTextMemory._index_add(self, items)  # rows only: the stored graph is kept
        self.graph, self._last_of_session, self._row_of = graph, last_of_session, None

    def index_nbytes(self) -> int:
        graph_json = json.dumps(nx.node_link_data(self.graph, edges="edges"))  # the graph as stored
        return super().index_nbytes() + len(graph_json.encode())
