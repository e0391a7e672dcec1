"""Confined, bounded file access: listed paths only, no links or special files, reads no further than declared."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from memos_lab.artifact.manifest import MANIFEST, FileEntry
from memos_lab.artifact.strict_json import MAX_JSON_BYTES, _short, parse_json
from memos_lab.errors import DataError

_CHUNK = 1 << 20


def _check_name(name: object, where: str) -> None:
    """A listed path: relative, '/'-separated, no empty, '.', '..' or hidden parts, no backslash or NUL."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise DataError(f"{where} {_short(name)}: not a relative path")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\x00" in name or any(not p or p.startswith(".") for p in parts):
        raise DataError(f"{where} {_short(name)}: only relative paths inside the artifact are allowed")
    if name == MANIFEST:
        raise DataError(f"{where} {_short(name)}: the manifest cannot list itself")


def _check_tree(folder: Path, files: Mapping[str, FileEntry], children: Sequence[str]) -> None:
    """Only the listed files, their folders and the children exist; no links or special files anywhere."""
    child_set = set(children)
    folders = {parent.as_posix() for name in files for parent in Path(name).parents[:-1]}
    folders |= {parent.as_posix() for name in children for parent in Path(name).parents[:-1]}
    stack = [(folder, "")]
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    raise DataError(f"{folder / name}: a symbolic link; artifacts never hold links")
                if entry.is_dir(follow_symlinks=False):
                    if name in child_set:
                        continue  # an artifact of its own, checked when it is read
                    if name not in folders:
                        raise DataError(f"{folder / name}: a folder the manifest does not list; remove it")
                    stack.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    if name not in files and name != MANIFEST:
                        raise DataError(f"{folder / name}: a file the manifest does not list; remove it")
                else:
                    raise DataError(f"{folder / name}: not a regular file")
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: missing from the artifact")


@contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, int]]:
    """(descriptor, size) of a regular file, never following a final symlink nor blocking on a FIFO."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as error:
        reason = "a symbolic link" if path.is_symlink() else error.strerror
        raise DataError(f"{path}: cannot be read ({reason})") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        yield handle, info.st_size
    finally:
        os.close(handle)


def _read_exact(handle: int, size: int, path: Path) -> Iterator[bytes]:
    """Blocks of exactly `size` bytes, then a check that nothing follows (never reads further)."""
    left = size
    while left:
        block = os.read(handle, min(_CHUNK, left))
        if not block:
            raise DataError(f"{path}: truncated (ends before its {size} bytes)")
        left -= len(block)
        yield block
    if os.read(handle, 1):
        raise DataError(f"{path}: longer than its {size} bytes")


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (no link followed, no FIFO waited on); else DataError."""
    return _read_bounded(path, limit)


def _read_bounded(path: Path, limit: int) -> bytes:
    with _open_regular(path) as (handle, size):
        if size > limit:
            raise DataError(f"{path}: {size} bytes, more than the limit of {limit}")
        return b"".join(_read_exact(handle, size, path))


def _hash_verified(path: Path, entry: FileEntry) -> None:
    with _open_regular(path) as (handle, size):
        if size != entry["bytes"]:
            raise DataError(f"{path}: truncated or altered ({size} bytes, the manifest says {entry['bytes']})")
        digest = hashlib.sha256()
        for block in _read_exact(handle, size, path):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: corrupt (sha256 differs from the manifest)")


def _read_verified(path: Path, entry: FileEntry) -> bytes:
    with _open_regular(path) as (handle, size):
        if size != entry["bytes"]:
            raise DataError(f"{path}: truncated or altered ({size} bytes, the manifest says {entry['bytes']})")
        data = b"".join(_read_exact(handle, size, path))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: corrupt (sha256 differs from the manifest)")
    return data


def read_json_file(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON of a file inside a verified artifact (a regular file, at most `max_bytes`)."""
    return parse_json(_read_bounded(Path(path), max_bytes), str(path), max_bytes)


def open_sqlite_readonly(path: Path, table: str) -> sqlite3.Connection:
    """SQLite opened read-only and immutable (no journal or WAL beside it is read or made), where `table`
    must be a real table: a view (which could be a runaway recursive query) is refused."""
    try:
        db = sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as error:
        raise DataError(f"{path}: not a readable SQLite file ({error})") from None
    try:
        kind = db.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    except sqlite3.Error as error:
        db.close()
        raise DataError(f"{path}: not a readable SQLite file ({error})") from None
    if kind != ("table",):
        db.close()
        raise DataError(f"{path}: {table!r} is {'missing' if kind is None else 'a ' + str(kind[0])}, not a table")
    return db


def file_entry(folder: Path, name: str) -> FileEntry:
    """The size and sha256 of a file as it is now: for migrating version-1 manifests that recorded none.
    The same checks apply (confined name, no links, a regular file)."""
    _check_name(name, f"{folder}: file")
    path = folder / name
    for parent in reversed(Path(name).parents[:-1]):
        if (folder / parent).is_symlink():
            raise DataError(f"{folder / parent}: a symbolic link; artifacts never hold links")
    with _open_regular(path) as (handle, size):
        digest = hashlib.sha256()
        for block in _read_exact(handle, size, path):
            digest.update(block)
    return {"bytes": size, "sha256": digest.hexdigest()}
