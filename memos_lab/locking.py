"""One writer at a time per cube folder or MOS root: an exclusive file lock beside the folder, whose file
names the holder (pid, host, command) so that a writer who gives up can say who it waited for."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from memos_lab.errors import BusyError, ConfigError

_HOLDER_BYTES = 512  # the holder line is ours, but the file may not be: never read more


def lock_path(folder: Path) -> Path:
    """`<parent>/.<name>.lock`: beside the folder, since a cube folder is replaced whole on every write."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def writer_lock(folder: Path, timeout: float) -> Iterator[None]:
    """Hold the exclusive writer lock of `folder` (reentrant within a process); wait up to `timeout` seconds,
    then raise BusyError naming the holder."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ConfigError(f"lock_timeout_s must be a number of seconds >= 0, got {timeout!r}")
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, is_singleton=True, preserve_lock_file=True, on_acquired=_write_holder)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise BusyError(
            f"{folder} is held by another writer ({_read_holder(path)}); gave up after {timeout:g} s (lock_timeout_s)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _write_holder(fd: int) -> None:
    command = " ".join(sys.argv)[:200]
    line = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}: {command}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, line.encode("utf-8", "replace"), 0)


def _read_holder(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            text = stream.read(_HOLDER_BYTES).decode("utf-8", "replace")
    except OSError:
        return "holder unknown"
    return " ".join(text.split()) or "holder unknown"
