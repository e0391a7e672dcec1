"""Memory items in SQLite: text, metadata as JSON, embeddings as raw float32 (never pickle)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from memos_lab.errors import DataError
from memos_lab.memory.item import MemoryItem, MemoryMetadata

_METADATA_FIELDS = frozenset(f.name for f in fields(MemoryMetadata))


def write_items(path: Path, items: list[MemoryItem]) -> None:
    """Write `items` (in their order) into a new SQLite file."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE items (position INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, text TEXT NOT NULL,"
            " metadata TEXT NOT NULL, embedding BLOB)"
        )
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
            (
                (
                    position,
                    item.id,
                    item.text,
                    json.dumps(asdict(item.metadata), sort_keys=True),
                    None if item.embedding is None else np.asarray(item.embedding, "<f4").tobytes(),
                )
                for position, item in enumerate(items)
            ),
        )
    db.close()


def read_items(path: Path, dim: int) -> list[MemoryItem]:
    """Items in stored order; a malformed row raises DataError naming the file and the item."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, text, metadata, embedding FROM items ORDER BY position").fetchall()
        finally:
            db.close()
    except sqlite3.Error as error:
        raise DataError(f"{path}: not a readable item store ({error})") from None
    return [_item(path, dim, *row) for row in rows]


def _item(path: Path, dim: int, item_id: str, text: str, metadata_json: str, blob: bytes | None) -> MemoryItem:
    where = f"{path}: item {item_id!r}"
    try:
        values = json.loads(metadata_json)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: metadata is not JSON ({error})") from None
    if not isinstance(values, dict) or set(values) - _METADATA_FIELDS:
        unknown = sorted(set(values) - _METADATA_FIELDS) if isinstance(values, dict) else values
        raise DataError(f"{where}: unknown metadata field(s) {unknown}")
    values["tags"] = tuple(values.get("tags", ()))
    embedding = None
    if blob is not None:
        if len(blob) != 4 * dim:
            raise DataError(f"{where}: embedding has {len(blob)} bytes, expected {4 * dim} (dim {dim})")
        embedding = np.frombuffer(blob, "<f4").astype(np.float32)
    return MemoryItem(text=text, metadata=MemoryMetadata(**values), id=item_id, embedding=embedding)
