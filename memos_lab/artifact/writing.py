"""Writing: a payload staged beside its target, listed in a manifest and swapped in atomically (crash-safe)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memos_lab.artifact.files import _CHUNK, _check_name, read_json_file
from memos_lab.artifact.manifest import FORMAT, MANIFEST, VERSION, FileEntry, now_iso
from memos_lab.artifact.strict_json import check_plain
from memos_lab.errors import ConfigError, DataError, StorageError


def write_artifact(
    folder: Path,
    kind: str,
    meta: Mapping[str, Any],
    *,
    files: Mapping[str, bytes] | None = None,
    build: Callable[[Path], None] | None = None,
    fingerprint: Mapping[str, str] | None = None,
    children: Sequence[str] = (),
) -> None:
    """Write an artifact crash-safely: the payload (`files`, then whatever `build(staging)` writes, e.g.
    child artifacts or an SQLite file) goes into a fresh folder beside `folder`, every file is listed with
    its size and sha256, and the folder is swapped in whole. An existing `folder` must be empty or an
    artifact; anything else is never replaced."""
    folder = Path(folder)
    meta = dict(meta)
    check_plain(meta, f"{folder}: {kind} meta")  # refuse now what a reader would refuse later
    _check_replaceable(folder)

    def fill(staging: Path) -> None:
        for name, data in (files or {}).items():
            _check_name(name, f"{folder}: payload file")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        if build is not None:
            build(staging)
        write_manifest(staging, kind, meta, fingerprint=fingerprint, children=children)

    atomic_write_dir(folder, fill)


def write_manifest(
    staging: Path,
    kind: str,
    meta: Mapping[str, Any],
    *,
    fingerprint: Mapping[str, str] | None = None,
    children: Sequence[str] = (),
) -> None:
    """List every file under `staging` (outside the children) and write the manifest; empty folders are
    dropped, since a reader accepts only listed paths."""

    for name in children:
        _check_name(name, f"{staging}: child")
        if not (staging / name / MANIFEST).is_file():
            raise ConfigError(f"{staging / name}: a child artifact must be written before its parent's manifest")
    _drop_empty_folders(staging, set(children))
    files: dict[str, FileEntry] = {}
    for path in sorted(staging.rglob("*")):
        name = path.relative_to(staging).as_posix()
        if any(name == child or name.startswith(child + "/") for child in children) or path.is_dir():
            continue
        if path.is_symlink() or not path.is_file():
            raise ConfigError(f"{path}: artifacts hold only regular files")
        _check_name(name, f"{staging}: written file")
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "created_at": now_iso(),
        "fingerprint": dict(fingerprint) if fingerprint is not None else None,
        "meta": dict(meta),
        "files": files,
        "children": list(children),
    }
    (staging / MANIFEST).write_text(
        json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _drop_empty_folders(staging: Path, keep: set[str]) -> None:
    for path in sorted((p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if path.relative_to(staging).as_posix() not in keep and not any(path.iterdir()):
            path.rmdir()


def _check_replaceable(folder: Path) -> None:
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (not any(folder.iterdir()) or _is_artifact(folder)):
        return
    raise ConfigError(f"{folder} exists and is not an empty folder or a memos_lab artifact; it is not replaced")


def _is_artifact(folder: Path) -> bool:
    """Whether `folder` holds a manifest of ours (any version), so replacing it loses nothing foreign."""
    try:
        raw = read_json_file(folder / MANIFEST)
    except DataError:
        return False
    if not isinstance(raw, dict):
        return False
    legacy = raw.get("format") == "memos_lab.cube" or "format_version" in raw or raw.get("kind") == "lora"
    return raw.get("format") == FORMAT or legacy


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _staging_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file crash-safely: write beside the target, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _staging_name(path)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # follows the umask
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _raise_storage_error(error, path)
        raise


def atomic_write_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Write a whole folder crash-safely: `build` fills a fresh staging folder beside `target`, every file
    is fsynced, then the folder is swapped in by rename, so `target` is always either the old or the new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(target)
    staging.mkdir()  # follows the umask, so the result looks like a plain mkdir
    try:
        build(staging)
        _fsync_tree(staging)
        if target.exists():
            _swap(staging, target)  # `staging` now holds the old folder
            shutil.rmtree(staging)
        else:
            os.rename(staging, target)
        _fsync_path(target.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        _raise_storage_error(error, target)
        raise


# errno values of a disk that is full, or of a file over its size limit (`ulimit -f`) or quota
_NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _raise_storage_error(error: BaseException, target: Path) -> None:
    """StorageError, one line, when the disk refused the write of `target` (full, over a limit, an I/O
    error, also as SQLite reports them); every other error is left to the caller to re-raise."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE | {errno.EIO}:
        reason = "no space left" if error.errno in _NO_SPACE else "an I/O error"
        detail = error.strerror
    elif isinstance(error, sqlite3.OperationalError) and getattr(error, "sqlite_errorname", "").startswith(
        ("SQLITE_FULL", "SQLITE_IOERR")
    ):
        reason = "no space left" if error.sqlite_errorname == "SQLITE_FULL" else "no space left or an I/O error"
        detail = f"SQLite: {error}"
    else:
        return
    raise StorageError(f"{reason} while writing {target} ({detail}); what was there is unchanged") from None


def _swap(new: Path, target: Path) -> None:
    """Exchange two folders atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames, where a
    crash in between leaves the old folder intact beside the target under a `.old` name."""
    if _rename_exchange(new, target):
        return
    backup = new.with_name(new.name + ".old")
    os.rename(target, backup)
    os.rename(new, target)
    os.rename(backup, new)


def _rename_exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        _fsync_path(path)
    _fsync_path(folder)


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
