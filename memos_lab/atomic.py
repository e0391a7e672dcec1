"""Crash-safe file writing: write beside the target, fsync, then rename over it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def atomic_write_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Write a whole folder crash-safely: `build` fills a fresh temporary folder beside `target`, every file
    is fsynced, then the folder is swapped in by rename, so `target` is always either the old or the new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like a mkdir
        build(staging)
        _fsync_tree(staging)
        if target.exists():
            _swap(staging, target)  # `staging` now holds the old folder
            shutil.rmtree(staging)
        else:
            os.rename(staging, target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
