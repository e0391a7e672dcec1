"""MemoryItem: one piece of declarative memory and its metadata."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import numpy as np

from memos_lab.artifact import now_iso  # one clock for items and artifacts; re-exported for memory's users

ACTIVE = "active"
ARCHIVED = "archived"  # superseded by a newer version (see `successor_id`)
DELETED = "deleted"  # soft-deleted; still stored until purged
STATUSES = (ACTIVE, ARCHIVED, DELETED)


def new_id() -> str:
    return uuid.uuid4().hex


class FrozenDict(dict):
    """A dict that refuses changes, so metadata handed to a caller cannot change what is stored."""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("memory metadata is read-only; change an item through the memory's update()")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:  # copy/deepcopy rebuild it whole
        return type(self), (dict(self),)


def frozen_vector(vector: Any) -> Any:
    """A float32 copy that no one can write to, not even after `setflags(write=True)` (it lives in bytes);
    anything that is not a float array is returned as is, for validation to refuse."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind != "f" or vector.ndim != 1:
        return vector
    if vector.dtype == np.float32 and isinstance(vector.base, bytes) and not vector.flags.writeable:
        return vector  # already frozen
    return np.frombuffer(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), dtype=np.float32)


@dataclass(frozen=True)
class MemoryMetadata:
    user: str | None = None
    session: str | None = None
    source: str | None = None  # provenance, e.g. "synth-0/D3:12"
    event_time: str | None = None  # when the remembered event happened (ISO-8601)
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    tags: tuple[str, ...] = ()
    status: str = ACTIVE
    version: int = 1
    predecessor_id: str | None = None
    successor_id: str | None = None
    usage_count: int = 0
    last_used_at: str | None = None
    extra: Mapping[str, str] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        if isinstance(self.tags, list):
            object.__setattr__(self, "tags", tuple(self.tags))
        if isinstance(self.extra, Mapping) and not isinstance(self.extra, FrozenDict):
            object.__setattr__(self, "extra", FrozenDict(self.extra))


@dataclass(frozen=True)
class MemoryItem:
    """An immutable value: stored items are shared with callers, so nothing in one may change in place."""

    text: str
    metadata: MemoryMetadata = field(default_factory=MemoryMetadata)
    id: str = field(default_factory=new_id)
    # Embedding of `text` under the owning memory's embedder; filled in by the backend on add.
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "embedding", frozen_vector(self.embedding))

    def evolve(self, **metadata_changes: Any) -> MemoryItem:
        """A copy with some metadata fields changed (items are values; nothing changes in place)."""
        return replace(self, metadata=replace(self.metadata, **metadata_changes))
