"""Writers' lock and leftovers: writers of one target serialise on a lock file; interrupted writes are cleaned up."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from filelock import FileLock, Timeout


def writer_lock(target: Path, timeout: float = -1) -> FileLock:
    """The lock every writer of `target` (an artifact folder, a registry file) holds: the file
    `<target>.lock` beside it. `timeout` in seconds (-1 waits for ever, 0 tries once); use as a context."""
    target = Path(target)
    return FileLock(f"{target}.lock", timeout=timeout)


def staging_leftovers(target: Path) -> list[Path]:
    """Staging files and folders of `target` left by interrupted writes: only our own names
    (`.<name>.<8 random>.tmp`, the `.old` of a two-rename swap, and the `.<name>.tmp-<8 hex>` of older code)."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.([a-z0-9_]{{8}}\.tmp(\.old)?|tmp-[0-9a-f]{{8}})$")
    try:
        return sorted(target.parent / name for name in os.listdir(target.parent) if pattern.match(name))
    except OSError:
        return []


def remove_stale_staging(target: Path, *, held: bool = False) -> list[Path]:
    """Remove `target`'s staging leftovers, only when no writer holds `writer_lock(target)` (or the caller
    holds it: `held=True`). Returns what was removed; a busy lock or a read-only place removes nothing."""
    leftovers = staging_leftovers(target)
    if not leftovers:
        return []
    if held:
        return _remove(leftovers)
    try:
        with writer_lock(target, timeout=0):
            return _remove(staging_leftovers(target))
    except (Timeout, OSError):
        return []


def _remove(paths: list[Path]) -> list[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return paths
