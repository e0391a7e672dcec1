"""MemoryItem: one piece of declarative memory and its metadata."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

ACTIVE = "active"
ARCHIVED = "archived"  # superseded by a newer version (see `successor_id`)
DELETED = "deleted"  # soft-deleted; still stored until purged
STATUSES = (ACTIVE, ARCHIVED, DELETED)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
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
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class MemoryItem:
    text: str
    metadata: MemoryMetadata = field(default_factory=MemoryMetadata)
    id: str = field(default_factory=new_id)
    # Embedding of `text` under the owning memory's embedder; filled in by the backend on add.
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def evolve(self, **metadata_changes: object) -> MemoryItem:
        """A copy with some metadata fields changed (items stored in a memory are never mutated in place)."""
        return replace(self, metadata=replace(self.metadata, **metadata_changes))
