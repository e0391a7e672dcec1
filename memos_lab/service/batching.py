"""Embedding for the server: concurrent requests' texts encoded in one embedder call, off the event loop.

A MiniLM forward on one CPU thread costs about as much for 8 short texts as for 2 or 3 alone (measured on the
2-core machine: 18 ms for one query, 40 ms for 8, 76 ms for 16), and while it runs on the event loop no other
request is served. So each search hands its query, and each add its items' texts, to `EmbeddingBatcher.embed`
and awaits the vectors: the texts that arrive while the previous batch is being encoded, or within
`serve.batch_window_ms` of the first waiting one (default 0: none), are encoded together, at most
`serve.max_query_batch` at a time, by one thread of their own. The request then runs on the event loop with its vectors
(`MOS.search(query_vector=...)`, items that carry their embedding). The MOS itself is only ever called on the
event loop: only the embedder runs on another thread, and `SerialEmbedder` lets one call in at a time (a
tokenizer is not safe to share between threads).

A text's vector does not depend on what it was encoded with beyond float rounding: a transformer's padded
batch gives each text the vector it gets alone to within ~2e-7 (MiniLM), the hashing embedder's exactly. So a
client alone on the server (one experiment's run) gets exactly the in-process MOS's vectors, and concurrent
ones vectors within that rounding of them.
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
    `texts` count the embedder calls and the texts they encoded, for tests and the load script."""

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

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings of `texts` (a search's query, an add's items), encoded with the texts of the other
        requests waiting with them; one row per text."""
        return np.stack(await asyncio.gather(*(self._one(text) for text in texts)))

    async def _one(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(text, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await waiting.future

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
