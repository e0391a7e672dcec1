"""The manifest: the layout every artifact folder records, and its time stamp."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

FORMAT = "memos_lab.artifact"
VERSION = 2  # version 1: the per-kind manifests written before this module (migrated on read)
MANIFEST = "manifest.json"


class FileEntry(TypedDict):
    bytes: int
    sha256: str


class _Manifest(TypedDict):
    format: Literal["memos_lab.artifact"]
    version: int
    kind: str
    created_at: str
    fingerprint: dict[str, str] | None
    meta: dict[str, Any]
    files: dict[str, FileEntry]
    children: list[str]


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second: when an artifact (or a memory item) was made."""
    return datetime.now(UTC).isoformat(timespec="seconds")
