"""Memory items in SQLite: text, metadata as JSON, embeddings as raw float32 (never pickle)."""

from __future__ import annotations

import functools
import json
import sqlite3
import typing
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from memos_lab.artifact import check_json, check_plain, open_sqlite_readonly, parse_json
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
            ((position, *item_row(item)) for position, item in enumerate(items)),
        )
    db.close()


def item_row(item: MemoryItem) -> tuple[str, str, str, bytes | None]:
    """An item as the columns (id, text, metadata JSON, float32 embedding bytes) every item store uses."""
    embedding = None if item.embedding is None else np.asarray(item.embedding, "<f4").tobytes()
    return item.id, item.text, json.dumps(asdict(item.metadata), sort_keys=True), embedding


def read_items(path: Path, dim: int) -> list[MemoryItem]:
    """Items in stored order, from SQLite opened read-only with `items` a real table; a malformed row
    raises DataError naming the file and the item."""
    db = open_sqlite_readonly(path, "items")
    try:
        rows = db.execute("SELECT id, text, metadata, embedding FROM items ORDER BY position").fetchall()
    except sqlite3.Error as error:
        raise DataError(f"{path}: not a readable item store ({error})") from None
    finally:
        db.close()
    return [item_from_row(path, dim, *row) for row in rows]


@functools.cache
def _metadata_types() -> dict[str, object]:
    return typing.get_type_hints(MemoryMetadata)


def item_from_row(
    path: Path, dim: int, item_id: object, text: object, metadata_json: object, blob: object
) -> MemoryItem:
    """The item of one stored row (`item_row`'s columns), every column checked: the file may not be ours."""
    where = f"{path}: item {str(item_id)[:80]!r}"
    for column, value, kind in (("id", item_id, str), ("text", text, str), ("metadata", metadata_json, str)):
        if not isinstance(value, kind):
            raise DataError(f"{where}: column {column} holds {type(value).__name__}, not text")
    if blob is not None and not isinstance(blob, bytes):
        raise DataError(f"{where}: column embedding holds {type(blob).__name__}, not a blob")
    assert isinstance(item_id, str) and isinstance(text, str) and isinstance(metadata_json, str)  # checked above
    check_plain([item_id, text], where)  # e.g. a lone surrogate
    values = parse_json(metadata_json.encode("utf-8", "surrogatepass"), f"{where} metadata")
    if not isinstance(values, dict) or set(values) - _METADATA_FIELDS:
        unknown = sorted(set(values) - _METADATA_FIELDS) if isinstance(values, dict) else values
        raise DataError(f"{where}: unknown metadata field(s) {unknown}")
    hints = _metadata_types()
    for key, value in values.items():
        check_json(value, hints[key], f"{where} metadata.{key}")
    values["tags"] = tuple(values.get("tags", ()))
    embedding = None
    if blob is not None:
        if len(blob) != 4 * dim:
            raise DataError(f"{where}: embedding has {len(blob)} bytes, expected {4 * dim} (dim {dim})")
        embedding = np.frombuffer(blob, "<f4").astype(np.float32)
    return MemoryItem(text=text, metadata=MemoryMetadata(**values), id=item_id, embedding=embedding)
