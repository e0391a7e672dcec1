"""Holding the writer lock of a cube folder or MOS root (artifact.writer_lock) for a whole read-change-write:
the lock file names its holder (pid, host, command), so that a writer who gives up can say who it waited for,
and the next writer clears what an interrupted write left."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from memos_lab.artifact import remove_stale_staging, writer_lock
from memos_lab.errors import BusyError, ConfigError

_HOLDER_BYTES = 512  # the holder line is ours, but the file may not be: never read more


def lock_file(target: Path) -> Path:
    return Path(writer_lock(target).lock_file)


@contextmanager
def hold_writer_lock(target: Path, timeout: float) -> Iterator[None]:
    """Hold `target`'s writer lock, waiting up to `timeout` seconds, then raise BusyError naming the holder.
    Staging leftovers of `target` (an interrupted write's) are removed once the lock is held."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ConfigError(f"lock_timeout_s must be a number of seconds >= 0, got {timeout!r}")
    lock = writer_lock(target, timeout)
    try:
        lock.acquire()
    except Timeout:
        raise BusyError(
            f"{target} is held by another writer ({_read_holder(Path(lock.lock_file))}); "
            f"gave up after {timeout:g} s (lock_timeout_s)"
        ) from None
    try:
        _write_holder(Path(lock.lock_file))
        remove_stale_staging(Path(target), held=True)
        yield
    finally:
        lock.release()


def _write_holder(path: Path) -> None:
    command = " ".join(sys.argv)[:200]
    line = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}: {command}\n"
    handle = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, line.encode("utf-8", "replace"))
    finally:
        os.close(handle)


def _read_holder(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            text = stream.read(_HOLDER_BYTES).decode("utf-8", "replace")
    except OSError:
        return "holder unknown"
    return " ".join(text.split()) or "holder unknown"
