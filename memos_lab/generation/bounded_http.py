"""An HTTP transport for the served client whose every attempt has a total deadline and a byte budget.

httpx's timeouts bound each socket operation, not a request: a server that drips one byte a second never
trips a 3 s read timeout. Here every connect, write and read of an attempt waits at most until the attempt's
deadline, and the bytes read (headers and body) are counted against a cap, whatever the server sends, so an
attempt ends within `timeout_s` and holds at most `max_bytes` of reply.

The budget is per thread (`attempt()` sets it around one request); the served client runs each request on
one thread, so concurrent requests have their own deadlines. Outside an `attempt()` nothing is bounded here
beyond httpx's own timeouts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore2
import httpx2

_local = threading.local()


class ReplyTooLarge(Exception):
    """The reply went past the byte cap (not an httpx error, so neither httpx nor openai retries it)."""


class _Budget:
    def __init__(self, timeout_s: float, max_bytes: int) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes

    def remaining(self, timeout: float | None, error: type[Exception]) -> float:
        """The wait allowed now: the smaller of httpx's per-operation timeout and the time to the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)


def _budget() -> _Budget | None:
    return getattr(_local, "budget", None)


def _resolve(host: str, port: int, budget: _Budget) -> list[str]:
    """The host's addresses, looked up within the attempt's deadline.

    `socket.create_connection` resolves names with `getaddrinfo`, which no socket timeout bounds (a stalled
    resolver holds it for its own retries, tens of seconds). The lookup runs on a daemon thread that is
    abandoned at the deadline; an IP literal needs none."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    found: list[list[str]] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except OSError as error:
            failed.append(error)

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(budget.remaining(None, httpcore2.ConnectTimeout))
    if found:
        return found[0]
    if failed:
        raise httpcore2.ConnectError(f"cannot resolve {host}: {failed[0]}")
    raise httpcore2.ConnectTimeout(f"looking up {host} took past the attempt's deadline")


@contextlib.contextmanager
def attempt(timeout_s: float, max_bytes: int) -> Iterator[None]:
    """Bound every network operation of this thread until exit: total time `timeout_s`, reply `max_bytes`."""
    _local.budget = _Budget(timeout_s, max_bytes)
    try:
        yield
    finally:
        _local.budget = None


class _BoundedStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget = _budget()
        if budget is None:
            return self._inner.read(max_bytes, timeout)
        data = self._inner.read(min(max_bytes, budget.bytes_left + 1), budget.remaining(timeout, httpcore2.ReadTimeout))
        budget.bytes_left -= len(data)
        if budget.bytes_left < 0:
            raise ReplyTooLarge(f"the reply is larger than {budget.max_bytes} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        budget = _budget()
        self._inner.write(buffer, timeout if budget is None else budget.remaining(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        budget = _budget()
        wait = timeout if budget is None else budget.remaining(timeout, httpcore2.ConnectTimeout)
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _BoundedBackend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        budget = _budget()
        if budget is None:
            return _BoundedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        addresses = _resolve(host, port, budget)
        for index, address in enumerate(addresses):  # as create_connection does: the next on a refusal
            wait = budget.remaining(timeout, httpcore2.ConnectTimeout)
            try:
                return _BoundedStream(self._inner.connect_tcp(address, port, wait, local_address, socket_options))
            except httpcore2.ConnectError:
                if index == len(addresses) - 1:
                    raise
        raise httpcore2.ConnectError(f"{host} has no address")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        budget = _budget()
        wait = timeout if budget is None else budget.remaining(timeout, httpcore2.ConnectTimeout)
        return _BoundedStream(self._inner.connect_unix_socket(path, wait, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class BoundedTransport(httpx2.HTTPTransport):
    """httpx's own transport over a connection pool whose sockets obey the thread's attempt budget.

    httpx takes no network backend, so the pool it built is replaced by one with ours (httpx2 and httpcore2
    are pinned; tests/generation/test_served_faults.py fails if a drip is no longer cut)."""

    def __init__(self, limits: httpx2.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_BoundedBackend(),
        )
