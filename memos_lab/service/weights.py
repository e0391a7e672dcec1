"""What the server does with a local model's weights (`serve ... model=NAME`): KV caches of a cube's
memories in its activation slot, and knowledge edits trained into its parametric slot as jobs.

The model is shared by every cube. A lock keeps its two users apart: a training job holds it for the whole
edit, and an activation request that finds it held is refused (409) rather than computing caches while an
adapter is switched on. MOS calls run on the event loop thread, as every request's do; a job's training
runs in the job thread on a copy of the cube's parametric memory, which replaces the slot (and the cube is
saved) only once the edit succeeded, so a failed or killed job leaves the cube's adapters as they were.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import threading
from collections.abc import Callable, Sequence
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


def cache_activation(
    mos: MOS, local: LocalModel | None, user: str, cube_id: str, max_items: int, per_item: bool, assembled: bool
) -> dict[str, Any]:
    """Encode the KV caches of the cube's `max_items` most recent active memories into its activation
    slot (kept caches are reused) and save the cube; what is cached now."""
    local = require(local)
    if not local.lock.acquire(blocking=False):
        raise BusyError("the model is training a parametric edit job; retry when it is done")
    try:
        memory = mos.slot(user, cube_id, "activation")
        if memory is None:
            memory = build_activation(local.activation, local.model)
        items = recent(mos.get_all(user, cube_id), max_items)
        added = cache_memories(memory, items, per_item, assembled)
        mos.fill_slot(user, cube_id, "activation", memory)
    finally:
        local.lock.release()
    return activation_summary(memory, items, added)


def edit_job(
    mos: MOS,
    local: LocalModel,
    loop: asyncio.AbstractEventLoop,
    user: str,
    cube_id: str,
    adapter: str,
    edits: Sequence[KnowledgeEdit],
) -> Callable[[], dict[str, Any]]:
    """The work of one edit job (run in the job thread): train `edits` into `adapter` of the cube's
    parametric memory (a new one of the configured editor if it has none) and save the cube."""

    def on_loop(call: Callable[[], T]) -> T:
        async def run() -> T:
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
