"""The one interface of declarative (textual) memory.

`TextualMemory` owns the items and their lifecycle (versions, soft delete, filters); a backend only
keeps its index over them by implementing `_index_add`, `_index_remove` and `_search`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from memos_lab.errors import ConfigError, DataError, MemosError, NotFoundError
from memos_lab.memory.item import ACTIVE, ARCHIVED, DELETED, STATUSES, MemoryItem, MemoryMetadata, now_iso
from memos_lab.models.embedder import Embedder
from memos_lab.settings import Settings

KEY_FIELD = "key"  # metadata.extra field holding an item's index key, when it differs from its text
MAX_TEXT_CHARS = 100_000  # longer texts are a bug upstream (a whole file read as one memory), not a memory
MAX_ID_CHARS = 128
ITEM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/+=-]*")  # printable, no spaces, not a path's leading dot
_OPTIONAL_TEXT = ("user", "session", "source", "event_time", "predecessor_id", "successor_id", "last_used_at")


@dataclass(frozen=True)
class SearchFilter:
    """Which items a search or listing may return. Times compare as ISO-8601 strings."""

    user: str | None = None
    session: str | None = None
    tags: tuple[str, ...] = ()  # an item must carry all of them
    statuses: tuple[str, ...] = (ACTIVE,)
    time_from: str | None = None  # inclusive bound on `event_time`
    time_to: str | None = None  # inclusive bound on `event_time`

    def __post_init__(self) -> None:
        unknown = set(self.statuses) - set(STATUSES)
        if unknown:
            raise ConfigError(f"filter statuses: unknown {sorted(unknown)}; valid: {list(STATUSES)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | SearchFilter | None) -> SearchFilter:
        if values is None:
            return cls()
        if isinstance(values, SearchFilter):
            return values
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"unknown filter field(s) {unknown}; valid: {valid}")
        raw: Mapping[str, Any] = values
        converted: dict[str, Any] = {
            k: tuple(v) if k in ("tags", "statuses") and v is not None else v for k, v in raw.items()
        }
        return cls(**converted)

    def matches(self, item: MemoryItem) -> bool:
        meta = item.metadata
        if meta.status not in self.statuses:
            return False
        if self.user is not None and meta.user != self.user:
            return False
        if self.session is not None and meta.session != self.session:
            return False
        if self.tags and not set(self.tags) <= set(meta.tags):
            return False
        if self.time_from is not None and (meta.event_time is None or meta.event_time < self.time_from):
            return False
        if self.time_to is not None and (meta.event_time is None or meta.event_time > self.time_to):
            return False
        return True


@dataclass(frozen=True)
class SearchHit:
    item: MemoryItem
    score: float


class TextualMemory(ABC):
    settings: Settings  # a backend's frozen settings dataclass (memos_lab/settings.py), built in __init__

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._items: dict[str, MemoryItem] = {}
        self._last_query: tuple[str, np.ndarray] | None = None  # the last query encoded, with its vector
        self._given_query: tuple[str, np.ndarray] | None = None  # the query vector the running search was given

    # ---- the public API -------------------------------------------------------------------------

    def add(self, items: Iterable[MemoryItem | str]) -> list[str]:
        """Store new items (strings become items with default metadata); returns their ids.

        The whole batch is checked before anything is stored: one bad item stores none of them.
        """
        batch = [MemoryItem(text=item) if isinstance(item, str) else item for item in items]
        seen: set[str] = set()
        for item in batch:
            check_item(item, self.embedder.dim)
            if item.id in self._items or item.id in seen:
                raise MemosError(f"memory item {item.id!r} already exists; use update() to change it")
            seen.add(item.id)
        missing = [i for i, item in enumerate(batch) if item.embedding is None]
        if missing:
            vectors = self.embedder.encode([self.key(batch[i]) for i in missing])
            for i, vector in zip(missing, vectors, strict=False):
                batch[i] = replace(batch[i], embedding=vector)  # a new frozen item: the caller's stays theirs
                check_item(batch[i], self.embedder.dim)
        for item in batch:
            self._items[item.id] = item
        try:
            self._index_add(batch)
        except BaseException:
            for item in batch:
                del self._items[item.id]
            raise
        return [item.id for item in batch]

    def search(
        self,
        query: str,
        top_k: int = 10,
        filters: Mapping[str, object] | SearchFilter | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """The best `top_k` items for `query`. `query_vector`: the query's embedding by this memory's embedder,
        when the caller already has it (a server encodes concurrent queries in one batch); the search then
        encodes nothing, and ranks exactly as with the vector it would have encoded."""
        if not isinstance(query, str) or not query.strip():
            raise MemosError("search query must be a non-empty string")
        if top_k <= 0:
            raise ConfigError(f"top_k must be positive, got {top_k}")
        search_filter = SearchFilter.from_mapping(filters)
        given = None if query_vector is None else (query, check_query_vector(query_vector, self.embedder.dim))
        if not self._items:
            return []
        self._given_query = given
        try:
            return self._search(query, top_k, search_filter)
        finally:
            self._given_query = None

    def get(self, item_id: str) -> MemoryItem:
        try:
            return self._items[item_id]
        except KeyError:
            raise NotFoundError(f"no memory item with id {item_id!r}") from None

    def get_all(self, filters: Mapping[str, object] | SearchFilter | None = None) -> list[MemoryItem]:
        search_filter = SearchFilter.from_mapping(filters)
        return [item for item in self._items.values() if search_filter.matches(item)]

    def update(self, item_id: str, text: str, **metadata_changes: Any) -> MemoryItem:
        """Store a new version of an item; the old one stays, archived, linked to its successor."""
        old = self.get(item_id)
        if old.metadata.status != ACTIVE:
            raise MemosError(f"memory item {item_id!r} is {old.metadata.status}; only active items can be updated")
        _check_text(text, item_id)
        _check_changes(metadata_changes, item_id)
        stamp = now_iso()
        # A reader's index key describes the old text; the new version is indexed under its own text.
        metadata_changes.setdefault("extra", {k: v for k, v in old.metadata.extra.items() if k != KEY_FIELD})
        new = MemoryItem(
            text=text,
            metadata=old.evolve(
                version=old.metadata.version + 1,
                predecessor_id=old.id,
                successor_id=None,
                created_at=stamp,
                updated_at=stamp,
                **metadata_changes,
            ).metadata,
        )
        new = self._items[self.add([new])[0]]  # the stored version, with its embedding
        self._replace(old.evolve(status=ARCHIVED, successor_id=new.id, updated_at=stamp))
        return new

    def merge(self, item_ids: Sequence[str], text: str | None = None, **metadata_changes: Any) -> MemoryItem:
        """Replace duplicates or contradicting items by one item (`text`, default the newest's text).

        The merged items stay, archived, each linked to the result (`successor_id`); the result records
        them in `extra["merged_from"]` and their sources in `extra["merged_sources"]` (`;`-separated).
        """
        if len(set(item_ids)) < 2 or len(set(item_ids)) != len(item_ids):
            raise MemosError(f"merge needs two or more distinct item ids, got {list(item_ids)}")
        olds = [self.get(item_id) for item_id in item_ids]
        inactive = [item.id for item in olds if item.metadata.status != ACTIVE]
        if inactive:
            raise MemosError(f"memory item(s) {inactive} are not active; only active items can be merged")
        newest = max(olds, key=lambda item: (item.metadata.event_time or "", item.metadata.updated_at))
        text = newest.text if text is None else text
        _check_text(text, "merged")
        _check_changes(metadata_changes, "merged")
        stamp = now_iso()
        sources = [item.metadata.source for item in olds if item.metadata.source]
        extra = {k: v for k, v in newest.metadata.extra.items() if k != KEY_FIELD}
        extra.update(merged_from=";".join(item_ids), merged_sources=";".join(sources))
        metadata = replace(
            newest.metadata, version=max(item.metadata.version for item in olds) + 1, predecessor_id=newest.id,
            successor_id=None, created_at=stamp, updated_at=stamp, tags=tuple(dict.fromkeys(t for i in olds for t in i.metadata.tags)),
            extra=extra,
        )  # fmt: skip
        merged = MemoryItem(text=text, metadata=replace(metadata, **metadata_changes))
        merged = self._items[self.add([merged])[0]]
        for item in olds:
            self._replace(item.evolve(status=ARCHIVED, successor_id=merged.id, updated_at=stamp))
        return merged

    def near_duplicates(self, threshold: float = 0.95) -> list[tuple[str, str, float]]:
        """Pairs of active items whose embeddings' cosine is at least `threshold`, most similar first."""
        active = [item for item in self._items.values() if item.metadata.status == ACTIVE]
        if len(active) < 2:
            return []
        vectors = np.stack(cast(list[np.ndarray], [item.embedding for item in active]))
        similarity = np.triu(vectors @ vectors.T, k=1)
        rows, cols = np.nonzero(similarity >= threshold)
        pairs = [(active[r].id, active[c].id, float(similarity[r, c])) for r, c in zip(rows, cols, strict=False)]
        return sorted(pairs, key=lambda pair: -pair[2])

    def delete(self, item_id: str, hard: bool = False) -> None:
        """Soft delete by default (status `deleted`, still stored); `hard=True` purges the item."""
        item = self.get(item_id)
        if hard:
            del self._items[item_id]
            self._index_remove([item_id])
        else:
            self._replace(item.evolve(status=DELETED, updated_at=now_iso()))

    def apply_stored(self, changes: Sequence[tuple[str, MemoryItem | None]]) -> None:
        """Make stored states current (a journal's rows, in order; None: purged). Idempotent: a state
        already held changes nothing. An id whose text or embedding changed is indexed afresh."""
        new: dict[str, MemoryItem] = {}
        for item_id, item in changes:
            new.pop(item_id, None)
            held = self._items.get(item_id)
            if held is not None and (item is None or not _same_content(held, item)):
                self.delete(item_id, hard=True)
                held = None
            if item is not None:
                if held is None:
                    new[item_id] = item
                elif held != item:
                    self._replace(item)
        if new:
            self.add(list(new.values()))

    def _query_vector(self, query: str) -> np.ndarray:
        """The query's embedding: the one the running search was given, else encoded once (several rankings
        of one search use it, and a repeated query is not encoded again)."""
        if self._given_query is not None and self._given_query[0] == query:
            return self._given_query[1]
        if self._last_query is None or self._last_query[0] != query:
            self._last_query = (query, self.embedder.encode([query])[0])
        return self._last_query[1]

    @staticmethod
    def key(item: MemoryItem) -> str:
        """The text an item is indexed under: its own text, or the richer key a reader gave it
        (`extra["key"]`, e.g. the turn with its neighbours and date), while searches still return the item."""
        return item.metadata.extra.get(KEY_FIELD) or item.text

    @property
    def returns_stored_items(self) -> bool:
        """True when search hits are the stored items themselves, so evidence (their sources) can be scored;
        a peer system that rewrites what it stores (mem0 with LLM extraction) returns memories of its own."""
        return True

    def counters(self) -> dict[str, int]:
        """Failures the backend counted instead of raising (a peer system's LLM extraction), by name; experiments
        sum them over cubes into `memory/<name>` metrics."""
        return {}

    def index_nbytes(self) -> int:
        """Memory held by the search index (embeddings, postings, graph), for cost comparisons."""
        return 0

    def __len__(self) -> int:
        return len(self._items)

    def config(self) -> dict[str, object]:
        """The settings besides the embedder, so a stored memory can be rebuilt as it was."""
        return self.settings.to_dict()

    # ---- what a backend implements --------------------------------------------------------------

    @abstractmethod
    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        """Index newly stored items (their embeddings are set)."""

    @abstractmethod
    def _index_remove(self, item_ids: Sequence[str]) -> None:
        """Drop purged items from the index."""

    @abstractmethod
    def _search(self, query: str, top_k: int, search_filter: SearchFilter) -> list[SearchHit]:
        """Best `top_k` stored items matching the filter, best first."""

    def _save_index(self, folder: Path) -> None:
        """Write index files that are costly to rebuild (never pickle). Default: none, rebuilt on load."""

    def _load_index(self, folder: Path, items: Sequence[MemoryItem]) -> None:
        """Restore the index over `items` (already in `self._items`, embeddings set). Default: rebuild."""
        if items:
            self._index_add(items)

    def _on_replace(self, item: MemoryItem) -> None:
        """Hook for backends whose index caches item metadata; the default index holds ids only."""

    # ---- helpers --------------------------------------------------------------------------------

    def _replace(self, item: MemoryItem) -> None:
        self._items[item.id] = item
        self._on_replace(item)


_METADATA_FIELDS = frozenset(f.name for f in fields(MemoryMetadata))


def check_item(item: object, dim: int) -> None:
    """Raise DataError naming the item and the field unless it can be stored: a valid id, text and metadata,
    and (when set) a finite float embedding of the embedder's size."""
    if not isinstance(item, MemoryItem):
        raise DataError(f"a memory item must be a MemoryItem or a string, got {type(item).__name__}")
    item_id = item.id
    if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ID_CHARS or not ITEM_ID.fullmatch(item_id):
        raise DataError(
            f"memory item id {str(item_id)[:MAX_ID_CHARS]!r}: use 1 to {MAX_ID_CHARS} letters, digits or '_.:@/+=-'"
        )
    _check_text(item.text, item_id)
    meta = item.metadata
    where = f"memory item {item_id!r}: metadata"
    if not isinstance(meta, MemoryMetadata):
        raise DataError(f"{where} must be a MemoryMetadata, got {type(meta).__name__}")
    for name in _OPTIONAL_TEXT:
        if getattr(meta, name) is not None and not isinstance(getattr(meta, name), str):
            raise DataError(f"{where}.{name} must be a string or None, got {type(getattr(meta, name)).__name__}")
    for name in ("created_at", "updated_at"):
        if not isinstance(getattr(meta, name), str):
            raise DataError(f"{where}.{name} must be a string, got {type(getattr(meta, name)).__name__}")
    if not isinstance(meta.tags, tuple) or not all(isinstance(tag, str) for tag in meta.tags):
        raise DataError(f"{where}.tags must be a tuple of strings, got {meta.tags!r}"[:300])
    if meta.status not in STATUSES:
        raise DataError(f"{where}.status {meta.status!r}: valid: {list(STATUSES)}")
    for name, least in (("version", 1), ("usage_count", 0)):
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DataError(f"{where}.{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(meta.extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.extra.items()
    ):
        raise DataError(f"{where}.extra must map strings to strings")
    vector = item.embedding
    if vector is None:
        return
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float32 or vector.shape != (dim,):
        shape = vector.shape if isinstance(vector, np.ndarray) else type(vector).__name__
        dtype = vector.dtype if isinstance(vector, np.ndarray) else ""
        raise DataError(
            f"memory item {item_id!r}: embedding {shape} {dtype}; the embedder makes float vectors of size {dim}"
        )
    if not np.isfinite(vector).all():
        raise DataError(f"memory item {item_id!r}: embedding holds NaN or infinite values")


def check_query_vector(vector: object, dim: int) -> np.ndarray:
    """`vector` as a query embedding of size `dim` (float32), or DataError saying what is wrong with it."""
    if not isinstance(vector, np.ndarray) or vector.shape != (dim,) or not np.issubdtype(vector.dtype, np.floating):
        shape = vector.shape if isinstance(vector, np.ndarray) else type(vector).__name__
        raise DataError(f"query vector {shape}: the embedder makes float vectors of size {dim}")
    if not np.isfinite(vector).all():
        raise DataError("query vector holds NaN or infinite values")
    return vector.astype(np.float32, copy=False)


def _check_changes(metadata_changes: Mapping[str, object], item_id: str) -> None:
    unknown = sorted(set(metadata_changes) - _METADATA_FIELDS)
    if unknown:
        raise MemosError(
            f"memory item {item_id!r}: unknown metadata field(s) {unknown}; valid: {sorted(_METADATA_FIELDS)}"
        )


def _check_text(text: object, item_id: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise MemosError(f"memory item {item_id!r}: text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise MemosError(
            f"memory item {item_id!r}: text has {len(text)} characters, more than the limit of {MAX_TEXT_CHARS}"
        )


def _same_content(a: MemoryItem, b: MemoryItem) -> bool:
    """Whether two states of one id index alike (same text, key and embedding): only metadata differs."""
    if a.text != b.text or TextualMemory.key(a) != TextualMemory.key(b):
        return False
    if a.embedding is None or b.embedding is None:
        return a.embedding is b.embedding
    return bool(np.array_equal(a.embedding, b.embedding))
