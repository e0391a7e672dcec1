"""A fault-injecting HTTP server on 127.0.0.1 that answers every request with a scripted reply: honest
OpenAI-style completions and streams, or drips, resets, endless and huge bodies, garbage, wrong types.

It writes raw bytes on the socket (no HTTP library between it and the client), so it can break the protocol
at any byte. The honest paths of the served client are tested against the real `transformers serve`
(tests/generation/conftest.py); this server exists only to inject faults.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Body = bytes | Callable[[], Iterable[bytes]]  # bytes, or a function giving the pieces (possibly endless)


@dataclass
class Reply:
    """How the server answers: a status line and headers, then the body, framed and paced as told."""

    body: Body = b""
    status: int = 200
    content_type: str = "application/json"
    framing: str = "length"  # "length" (Content-Length), "chunked", "close" (until the connection closes)
    declared_length: int | None = None  # a Content-Length other than the body's (with `hold`: never ends)
    hold: bool = False  # keep the connection open after the reply, sending nothing, until the server stops
    drip_s: float = 0.0  # a pause before each byte (a slow server); 0: pieces are sent whole
    reset_after: int | None = None  # send this many bytes of the reply, then reset the connection
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None  # sent as is instead of a status line, headers and body (garbage)

    def wire(self) -> Iterator[bytes]:
        """The bytes on the wire, piece by piece."""
        if self.raw is not None:
            yield self.raw
            return
        pieces = [self.body] if isinstance(self.body, bytes) else self.body()
        head = [f"HTTP/1.1 {self.status} X", f"Content-Type: {self.content_type}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in self.headers]
        if self.framing == "length":
            length = self.declared_length
            if length is None:
                pieces = [b"".join(pieces)]
                length = len(pieces[0])
            head.append(f"Content-Length: {length}")
        elif self.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        yield ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        for piece in pieces:
            if self.framing == "chunked":
                if piece:
                    yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            else:
                yield piece
        if self.framing == "chunked":
            yield b"0\r\n\r\n"


def completion(content: Any = "Lisbon", usage: Any = None, model: Any = "m") -> dict[str, Any]:
    """An OpenAI chat completion (non-streamed) holding `content`."""
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6} if usage is None else usage,
    }


def chunk(content: Any = None, usage: Any = None, model: Any = "m") -> dict[str, Any]:
    """One streamed chunk: a piece of answer, or (with `usage`) the last one, without choices."""
    choices = [] if usage is not None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices,
            "usage": usage}  # fmt: skip


def sse(events: Iterable[Any], done: bool = True) -> Iterator[bytes]:
    """Server-sent events of JSON values (text as is), then `data: [DONE]`."""
    for event in events:
        yield b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"
    if done:
        yield b"data: [DONE]\n\n"


def honest_stream(pieces: Iterable[str], usage: Any = None) -> Callable[[], Iterator[bytes]]:
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6} if usage is None else usage
    return lambda: sse([*(chunk(piece) for piece in pieces), chunk(usage=usage)])


def endless_stream(piece: str = "la ") -> Callable[[], Iterator[bytes]]:
    """A stream that never ends: a piece of answer after another, no usage, no [DONE]."""

    def events() -> Iterator[bytes]:
        while True:
            yield from sse([chunk(piece)], done=False)

    return events


def json_reply(value: Any, **reply: Any) -> Reply:
    return Reply(body=json.dumps(value).encode(), **reply)


@dataclass
class HostileServer:
    """`with HostileServer() as server:` serves `server.reply` at `server.url` (an OpenAI-style base URL)."""

    reply: Reply = field(default_factory=lambda: json_reply(completion()))
    requests: int = 0

    def __enter__(self) -> HostileServer:
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.requests += 1
                connection: socket.socket = self.request
                connection.settimeout(5.0)
                with contextlib.suppress(OSError):
                    _read_request(connection)
                    server._answer(connection, server.reply)

        class Threading(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Threading(("127.0.0.1", 0), Handler)
        self._stopping = threading.Event()
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _answer(self, connection: socket.socket, reply: Reply) -> None:
        sent = 0
        for piece in reply.wire():
            if self._stopping.is_set():
                return
            if reply.reset_after is not None and sent + len(piece) >= reply.reset_after:
                connection.sendall(piece[: reply.reset_after - sent])
                _reset(connection)
                return
            if reply.drip_s:
                for byte in range(len(piece)):
                    if self._stopping.wait(reply.drip_s):
                        return
                    connection.sendall(piece[byte : byte + 1])
            else:
                connection.sendall(piece)
            sent += len(piece)
        if reply.hold:
            self._stopping.wait()
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_WR)
            time.sleep(0.01)  # let the client read the end before the socket closes


def _read_request(connection: socket.socket) -> bytes:
    """The request's head and body (by Content-Length): read before answering, as a server would."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        piece = connection.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a middlebox does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
