"""Embedding for the server: concurrent searches' queries encoded in one embedder call, off the event loop.

A MiniLM forward on one CPU thread costs about as much for 8 short queries as for 2 or 3 alone (it is
dominated by fixed per-call work), and while it runs on the event loop no other request is served. So each
search hands its query to `EmbeddingBatcher.query` and awaits its vector: the queries that arrive within
`serve.batch_window_ms` of the first waiting one (or while the previous batch is being encoded) are encoded
together, at most `serve.max_query_batch` at a time, by one thread of their own; the search then runs on the
event loop with its vector (`MOS.search(query_vector=...)`). The MOS itself is only ever called on the event
loop: only the embedder runs on another thread, and `SerialEmbedder` lets one call in at a time (a
tokenizer is not safe to share between threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from memos_lab.models.embedder import Embedder


class SerialEmbedder(Embedder):
    """`inner`, one `encode` at a time: the server's batching thread and its event loop (a reader's keyed
    items, a cube read from disk) may both encode."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.legacy_name, self.dim = inner.name, inner.legacy_name, inner.dim
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.inner.encode(texts)


@dataclass
class _Waiting:
    text: str
    future: asyncio.Future[np.ndarray]
    since: float  # the event loop's clock when it arrived


class EmbeddingBatcher:
    """Texts to embed for concurrent requests, encoded on one thread (module docstring). `batches` and
    `texts` count what was encoded, for tests and the load script."""

    def __init__(self, embedder: Embedder, window_s: float, max_batch: int) -> None:
        self.embedder = embedder
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0
        self.texts = 0
        self._waiting: list[_Waiting] = []
        self._full = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="memos_lab-embed")

    async def query(self, text: str) -> np.ndarray:
        """The embedding of one search's query, encoded with the other queries waiting with it."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(text, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await waiting.future

    async def alone(self, texts: Sequence[str]) -> np.ndarray:
        """`texts` encoded in one call of their own on the embedding thread (an add's items, encoded exactly as
        the in-process MOS encodes them: together, and with no one else's)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.embedder.encode, list(texts))

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            wait = self._waiting[0].since + self.window_s - loop.time()
            if wait > 0 and len(self._waiting) < self.max_batch:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            batch = [waiting for waiting in self._waiting[: self.max_batch] if not waiting.future.done()]
            del self._waiting[: self.max_batch]
            if not batch:  # every request of it went away (cancelled)
                continue
            try:
                vectors = await loop.run_in_executor(self._thread, self.embedder.encode, [w.text for w in batch])
            except Exception as error:  # each search fails with it, as it would have encoding alone
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
                continue
            self.batches += 1
            self.texts += len(batch)
            for waiting, vector in zip(batch, vectors, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(vector)
