"""`vector`: dense vectors in a faiss index (flat, HNSW or IVF), built for stores of millions of items.

Every item gets a stable int64 faiss id (IndexIDMap2), so purging items never renumbers the others.
HNSW cannot remove vectors; purged ids become tombstones, dropped when the index is rebuilt (once they
outnumber the live vectors). Tombstones and soft-deleted or archived items are ruled out inside faiss by an
IDSelector, so a search does not over-fetch past them. With fusion="rrf" the dense candidates are
fused with BM25's best candidates by reciprocal rank, as in general_text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import faiss
import numpy as np

from memos_lab.artifact import read_json_file
from memos_lab.errors import DataError
from memos_lab.memory.item import ACTIVE, MemoryItem
from memos_lab.memory.textual.base import SearchFilter, SearchHit, TextualMemory
from memos_lab.memory.textual.lexical import Bm25Index, FusionSettings, fuse_ranked_lists
from memos_lab.memory.textual.stages import staged_search
from memos_lab.models.embedder import Embedder
from memos_lab.settings import one_of, positive_int

INDEX_TYPES = ("flat", "hnsw", "ivf")
FUSIONS = ("dense", "rrf")
INDEX_FILE = "vectors.faiss"
_INDEX_CLASSES = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}
IDS_FILE = "vector_ids.json"
_IVF_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid


def _faiss_gpu(device: str) -> int | None:
    """The GPU number a `device` setting names, when faiss can use it; None: the index stays on the CPU."""
    from memos_lab.models.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    return resolved.index or 0


@dataclass(frozen=True)
class VectorSettings(FusionSettings):
    # where the index lives: a runtime choice passed to the constructor, not a setting a cube stores
    config_keys: ClassVar[Mapping[str, Any]] = {"device": "cpu"}
    # flat: exact; hnsw: graph ANN (fast search, no true removal); ivf: inverted lists
    index_type: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    ivf_nlist: int = 1024  # capped at items/39 while the store is small
    ivf_nprobe: int = 16
    fusion: str = "rrf"  # rrf | dense
    candidates: int = 100  # dense and lexical candidates taken into the fusion

    def validate(self) -> None:
        super().validate()
        one_of(self, "index_type", INDEX_TYPES)
        one_of(self, "fusion", FUSIONS)
        positive_int(self, "hnsw_m", "ef_construction", "ef_search", "ivf_nlist", "ivf_nprobe", "candidates")


class VectorMemory(TextualMemory):
    settings_class = VectorSettings
    settings: VectorSettings

    def __init__(self, embedder: Embedder, device: str = "cpu", **settings: Any) -> None:
        super().__init__(embedder)
        self.settings = VectorSettings.from_mapping(settings)
        self._gpu = _faiss_gpu(device) if self.settings.index_type == "flat" else None
        self._gpu_resources = (
            faiss.StandardGpuResources() if self._gpu is not None else None
        )  # lives as long as the index
        self._faiss_id: dict[str, int] = {}  # item id -> faiss id
        self._item_id: dict[int, str] = {}  # faiss id -> item id
        self._next_id = 0
        self._tombstones: set[int] = set()
        self._inactive: dict[int, str] = {}  # faiss id -> status, of items that are not active
        # built per statuses filter
        self._selector: tuple[frozenset[str], faiss.SearchParameters | None, list[object]] | None = None
        self._pending: list[int] = []  # IVF: ids waiting for the index to be trained
        self._index = self._new_index()
        self._bm25 = Bm25Index(self.settings.bm25_k1, self.settings.bm25_b, self.settings.bm25_stemming)
        self._bm25_rows: list[str] = []  # item ids in BM25 row order

    # ---- index maintenance ----------------------------------------------------------------------

    def _new_index(self, n_train: int = 0) -> faiss.Index:
        dim = self.embedder.dim
        base: faiss.IndexHNSWFlat | faiss.IndexIVFFlat
        if self.settings.index_type == "flat":
            return self._on_device(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        elif self.settings.index_type == "hnsw":
            base = faiss.IndexHNSWFlat(dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.settings.ef_construction
            base.hnsw.efSearch = self.settings.ef_search
        else:
            # Fewer lists than asked when the store is small, so every list gets enough training points.
            nlist = max(1, min(self.settings.ivf_nlist, n_train // _IVF_POINTS_PER_LIST))
            base = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            base.nprobe = min(self.settings.ivf_nprobe, nlist)
        return faiss.IndexIDMap2(base)

    def _on_device(self, index: faiss.Index) -> faiss.Index:
        """A flat index (exact: the same hits as on the CPU, up to float rounding) on the GPU when `device` is
        one and faiss has GPU support (faiss-gpu, `.[gpu]`); HNSW has no GPU version, IVF stays on the CPU."""
        return index if self._gpu is None else faiss.index_cpu_to_gpu(self._gpu_resources, self._gpu, index)  # type: ignore[arg-type]  # resources are set whenever _gpu is

    def _on_cpu(self, index: faiss.Index) -> faiss.Index:
        return index if self._gpu is None else faiss.index_gpu_to_cpu(index)

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        ids = []
        for item in items:
            self._faiss_id[item.id] = self._next_id
            self._item_id[self._next_id] = item.id
            ids.append(self._next_id)
            self._next_id += 1
        self._note_statuses(items)
        if self._index.is_trained:
            self._index.add_with_ids(
                np.stack(cast(list[np.ndarray], [item.embedding for item in items])), np.asarray(ids, dtype=np.int64)
            )
        else:
            self._pending.extend(ids)  # IVF trains on the first search, once it has seen the data
        self._bm25_add(items)

    def _index_remove(self, item_ids: Sequence[str]) -> None:
        removed = [self._faiss_id.pop(item_id) for item_id in item_ids]
        for faiss_id in removed:
            del self._item_id[faiss_id]
            self._inactive.pop(faiss_id, None)
        self._selector = None
        pending = set(self._pending)
        stored = np.asarray([i for i in removed if i not in pending], dtype=np.int64)
        self._pending = [i for i in self._pending if i in self._item_id]
        if self.settings.index_type == "hnsw":
            self._tombstones.update(stored.tolist())
            if len(self._tombstones) > len(self._item_id):
                self._rebuild()
        elif len(stored) and self._gpu is not None:
            self._rebuild()  # a GPU flat index cannot remove ids; rebuilding it from the live items is exact
        elif len(stored):
            self._index.remove_ids(stored)  # type: ignore[arg-type]  # faiss's stubs omit the id-array form it accepts
        gone = set(item_ids)
        self._bm25.remove([row for row, item_id in enumerate(self._bm25_rows) if item_id in gone])
        self._bm25_rows = [item_id for item_id in self._bm25_rows if item_id not in gone]

    def _bm25_add(self, items: Sequence[MemoryItem]) -> None:
        self._bm25.add([self.key(item) for item in items])
        self._bm25_rows.extend(item.id for item in items)

    def _rebuild(self) -> None:
        """A fresh index over the live items, keeping their faiss ids."""
        ids = sorted(self._item_id)
        self._index = self._new_index(n_train=len(ids))
        self._tombstones.clear()
        self._pending = []
        self._selector = None
        if ids:
            vectors = np.stack(cast(list[np.ndarray], [self._items[self._item_id[i]].embedding for i in ids]))
            if not self._index.is_trained:
                self._index.train(vectors)
            self._index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def _note_statuses(self, items: Sequence[MemoryItem]) -> None:
        for item in items:
            if item.metadata.status == ACTIVE:
                self._inactive.pop(self._faiss_id[item.id], None)
            else:
                self._inactive[self._faiss_id[item.id]] = item.metadata.status
        self._selector = None

    def _on_replace(self, item: MemoryItem) -> None:
        self._note_statuses([item])

    def _ensure_trained(self) -> None:
        if self._pending:
            self._rebuild()

    # ---- search ---------------------------------------------------------------------------------

    def _search(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        return staged_search(self.settings, query, lambda k: self._ranked(query, k, search_filter), top_k)

    def _ranked(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        self._ensure_trained()
        query_vector = self._query_vector(query)[None, :].astype(np.float32)
        # Over-fetch until enough candidates pass the filter (or the whole store was seen).
        needed = want = max(top_k, self.settings.candidates)
        while True:
            dense = self._dense_candidates(query_vector, want, search_filter)
            if len(dense) >= needed or want >= len(self._item_id) + len(self._tombstones):
                break
            want *= 4
        dense = dense[:needed]
        if self.settings.fusion == "dense":
            return [SearchHit(self._items[item_id], score) for item_id, score in dense[:top_k]]
        return self._fuse(query, dense, top_k, search_filter)

    def _dense_candidates(
        self, query_vector: np.ndarray, k: int, search_filter: SearchFilter
    ) -> list[tuple[str, float]]:
        k = min(k, self._index.ntotal)
        if k == 0:
            return []
        scores, ids = self._index.search(query_vector, k, params=self._search_params(search_filter))
        found = []
        for score, faiss_id in zip(scores[0], ids[0], strict=False):
            item_id = self._item_id.get(int(faiss_id))  # -1 (not enough neighbours) and tombstones map to None
            if item_id is not None and search_filter.matches(self._items[item_id]):
                found.append((item_id, float(score)))
        return found

    def _search_params(self, search_filter: SearchFilter) -> faiss.SearchParameters | None:
        """faiss search parameters whose IDSelector rules out the items of statuses the filter excludes and
        HNSW tombstones; None when nothing is ruled out (or the filter wants inactive items only)."""
        statuses = frozenset(search_filter.statuses)
        if ACTIVE not in statuses:
            return None  # few items qualify: the over-fetch loop finds them
        if self._selector is None or self._selector[0] != statuses:
            excluded = [faiss_id for faiss_id, status in self._inactive.items() if status not in statuses]
            excluded += self._tombstones
            params: faiss.SearchParameters | None = None
            keep: list[object] = []
            if excluded:
                batch = faiss.IDSelectorBatch(np.asarray(excluded, dtype=np.int64))
                selector = faiss.IDSelectorNot(batch)
                if self.settings.index_type == "hnsw":
                    params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.settings.ef_search)  # type: ignore[attr-defined]  # missing from faiss's stubs
                elif self.settings.index_type == "ivf":
                    params = faiss.SearchParametersIVF(sel=selector, nprobe=faiss.extract_index_ivf(self._index).nprobe)  # type: ignore[call-arg]  # faiss's stubs omit the SWIG keyword constructor
                else:
                    params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # faiss's stubs omit the SWIG keyword constructor
                keep = [batch, selector]  # faiss holds raw pointers: the Python objects must outlive the params
            self._selector = (statuses, params, keep)
        return self._selector[1]

    def _fuse(
        self, query: str, dense: list[tuple[str, float]], top_k: int, search_filter: SearchFilter
    ) -> list[SearchHit]:
        lexical = self._bm25.scores(query)
        positive = np.flatnonzero(lexical > 0)
        limit = 4 * self.settings.candidates
        shortlist = positive
        if len(positive) > limit:  # sort only the best few: cheap even at a million items
            shortlist = positive[np.argpartition(-lexical[positive], limit - 1)[:limit]]
        lexical_top = self._lexical_ranked(shortlist, lexical, search_filter, len(dense))
        if len(lexical_top) < len(dense) and len(shortlist) < len(positive):  # a tight filter: sort them all
            lexical_top = self._lexical_ranked(positive, lexical, search_filter, len(dense))
        s = self.settings
        fused = fuse_ranked_lists(
            [(s.dense_weight, [item_id for item_id, _ in dense]), (s.lexical_weight, lexical_top)], s.rrf_k
        )
        return [SearchHit(self._items[item_id], score) for item_id, score in fused[:top_k]]

    def _lexical_ranked(self, rows: np.ndarray, lexical: np.ndarray, search_filter: SearchFilter, k: int) -> list[str]:
        ranked = (self._bm25_rows[row] for row in rows[np.argsort(-lexical[rows], kind="stable")])
        return [item_id for item_id in ranked if search_filter.matches(self._items[item_id])][:k]

    # ---- persistence and cost -------------------------------------------------------------------

    def _save_index(self, folder: Path) -> None:
        self._ensure_trained()
        faiss.write_index(self._on_cpu(self._index), str(folder / INDEX_FILE))
        ids = {"next_id": self._next_id, "ids": sorted(self._item_id.items()), "tombstones": sorted(self._tombstones)}
        (folder / IDS_FILE).write_text(json.dumps(ids))

    def _load_index(self, folder: Path, items: Sequence[MemoryItem]) -> None:
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
            ids = read_json_file(folder / IDS_FILE)
            item_id = {int(faiss_id): str(item) for faiss_id, item in ids["ids"]}
            next_id, tombstones = int(ids["next_id"]), {int(i) for i in ids["tombstones"]}
        except (RuntimeError, OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{folder}: unreadable vector index ({str(error).strip().splitlines()[0][:200]})") from None
        base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if (
            base is None
            or type(base) is not _INDEX_CLASSES[self.settings.index_type]
            or base.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            found = type(base or index).__name__
            raise DataError(
                f"{folder / INDEX_FILE}: a faiss {found} index, not the {self.settings.index_type} index this memory uses"
            )
        if set(item_id.values()) != {item.id for item in items} or index.ntotal != len(item_id) + len(tombstones):
            raise DataError(f"{folder / INDEX_FILE}: does not match the cube's items")
        if index.d != self.embedder.dim:
            raise DataError(f"{folder / INDEX_FILE}: vectors of dim {index.d}, the embedder makes {self.embedder.dim}")
        index = self._on_device(index)
        self._index, self._item_id, self._next_id, self._tombstones = index, item_id, next_id, tombstones
        self._faiss_id = {item: faiss_id for faiss_id, item in item_id.items()}
        self._inactive = {}
        self._note_statuses(items)
        self._bm25 = Bm25Index(self.settings.bm25_k1, self.settings.bm25_b, self.settings.bm25_stemming)
        self._bm25_rows = []
        self._bm25_add([self._items[item] for item in self._faiss_id])
        if self.settings.index_type == "hnsw":
            hnsw_index = cast(faiss.IndexHNSWFlat, faiss.downcast_index(cast(faiss.IndexIDMap2, index).index))
            hnsw_index.hnsw.efSearch = self.settings.ef_search
        elif self.settings.index_type == "ivf":
            faiss.extract_index_ivf(index).nprobe = self.settings.ivf_nprobe

    def index_nbytes(self) -> int:
        self._ensure_trained()
        return int(faiss.serialize_index(self._on_cpu(self._index)).nbytes) + self._bm25.nbytes()
