"""What the server does with a local model's weights (`serve ... model=NAME`): KV caches of a cube's
memories in its activation slot, and knowledge edits trained into its parametric slot as jobs.

The model is shared by every cube. A lock keeps its users apart: a training job holds it for the whole
edit, and an activation request that finds it held (by a job or another activation request) is refused
(409) rather than computing caches while an adapter is switched on. MOS calls run on the event loop thread,
as every request's do; the model's work runs on other threads. A job's training runs in the job thread on a
copy of the cube's parametric memory, which replaces the slot (and the cube is saved) only once the edit
succeeded, so a failed or killed job leaves the cube's adapters as they were. An activation request
computes its caches on a worker thread into the cube's activation memory itself (kept caches are reused);
meanwhile the requests that would change or dump that memory (update, merge and delete of the cube's items,
which drop their caches; a save; a job's saving the cube) wait on the cube's `CubeGuard`, so none sees it
half-built and no cache of a changed memory survives. Adds, searches and reads are served meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import BusyError, ConfigError
from memos_lab.loading.activation import activation_summary, cache_memories, recent
from memos_lab.memory.activation.base import build_activation
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.llm import LanguageModel
from memos_lab.mos import MOS

BUSY = (
    "the model is busy training a parametric edit job or caching another request's activations; retry when it is done"
)
NO_MODEL = "no local model configured: start the server with model=NAME (e.g. model=tiny_llama) to use the weights"
T = TypeVar("T")


@dataclass
class LocalModel:
    """The served process's own model and the configs of the memories built on it."""

    model: LanguageModel
    activation: DictConfig  # a conf/activation/ node
    parametric: DictConfig  # a conf/parametric/ node: the editor of cubes that have no parametric memory yet
    lock: threading.Lock = field(default_factory=threading.Lock)


def require(local: LocalModel | None) -> LocalModel:
    if local is None:
        raise ConfigError(NO_MODEL)
    return local


class CubeGuard:
    """The cubes whose activation memory a thread is building now; what must not touch it waits."""

    def __init__(self) -> None:
        self._building: dict[str, asyncio.Event] = {}

    async def settled(self, cube_id: str) -> None:
        """Return once no activation memory of `cube_id` is being built (at once, nearly always)."""
        while (building := self._building.get(cube_id)) is not None:
            await building.wait()

    @contextmanager
    def building(self, cube_id: str) -> Iterator[None]:
        """Mark `cube_id`'s activation memory as being built (call right after `settled`, with no await between)."""
        assert cube_id not in self._building
        done = self._building[cube_id] = asyncio.Event()
        try:
            yield
        finally:
            del self._building[cube_id]
            done.set()


async def cache_activation(
    mos: MOS,
    local: LocalModel | None,
    guard: CubeGuard,
    user: str,
    cube_id: str,
    max_items: int,
    per_item: bool,
    assembled: bool,
) -> dict[str, Any]:
    """Encode the KV caches of the cube's `max_items` most recent active memories into its activation
    slot (kept caches are reused), on a worker thread, and save the cube; what is cached now."""
    local = require(local)
    await guard.settled(cube_id)
    if not local.lock.acquire(blocking=False):
        raise BusyError(BUSY)
    try:
        with guard.building(cube_id):
            memory = mos.slot(user, cube_id, "activation")
            if memory is None:
                memory = build_activation(local.activation, local.model)
            items = recent(mos.get_all(user, cube_id), max_items)
            added = await asyncio.to_thread(cache_memories, memory, items, per_item, assembled)
            mos.fill_slot(user, cube_id, "activation", memory)
    finally:
        local.lock.release()
    return activation_summary(memory, items, added)


def edit_job(
    mos: MOS,
    local: LocalModel,
    loop: asyncio.AbstractEventLoop,
    guard: CubeGuard,
    user: str,
    cube_id: str,
    adapter: str,
    edits: Sequence[KnowledgeEdit],
) -> Callable[[], dict[str, Any]]:
    """The work of one edit job (run in the job thread): train `edits` into `adapter` of the cube's
    parametric memory (a new one of the configured editor if it has none) and save the cube."""

    def on_loop(call: Callable[[], T]) -> T:
        async def run() -> T:
            await guard.settled(cube_id)  # the cube's activation memory is whole when the cube is saved
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    def work() -> dict[str, Any]:
        import hydra.utils

        with local.lock:
            current: ParametricMemory | None = on_loop(lambda: mos.slot(user, cube_id, "parametric"))
            if current is None:
                memory = hydra.utils.instantiate(local.parametric, _partial_=True)(model=local.model, adapter=adapter)
            else:
                memory = _copy(current, local.model)
            try:
                if adapter in memory.adapters:
                    memory.switch(adapter)
                elif current is not None:
                    memory.create_adapter(adapter)
                report = memory.edit(edits)
            except BaseException:
                memory.close()
                raise
        try:
            on_loop(lambda: mos.fill_slot(user, cube_id, "parametric", memory))
        except BaseException:
            memory.close()
            raise
        return {
            "adapter": adapter,
            "adapters": memory.adapters,
            "edits": report.edits,
            "edits_total": len(memory.edits(adapter)),
            "steps": report.steps,
            "train_s": report.seconds,
            "final_loss": report.final_loss if math.isfinite(report.final_loss) else None,
            "learned": report.learned,
        }

    return work


def _copy(memory: ParametricMemory, model: LanguageModel) -> ParametricMemory:
    """A second memory with the same adapters on the shared model (through its own artifact)."""
    with tempfile.TemporaryDirectory(prefix="memos_lab-parametric-") as folder:
        memory.save(Path(folder) / "memory")
        return type(memory).load(Path(folder) / "memory", model)
