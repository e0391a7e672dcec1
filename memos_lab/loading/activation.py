"""Precompute the KV caches of a user's memories and store them in the activation slot of their cube: one
chunk cache per memory line (as MemChat renders it), composable into any working memory (conf/compose/),
plus the cache of the recent memories assembled in time order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import hydra.utils
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.errors import ConfigError
from memos_lab.loading.common import cube_writer, open_cube, required, save_cube
from memos_lab.memory.activation.base import ActivationMemory, ByteBudget, build_activation
from memos_lab.memory.item import MemoryItem, memory_line
from memos_lab.settings import Settings, positive, positive_int, uses_settings

SET_KEY = "set:recent"  # the cache of the assembled recent memories, in time order


@dataclass(frozen=True)
class ActivationLoadSettings(Settings):
    section: ClassVar[str] = "memory_type"
    instantiated: ClassVar[bool] = False
    declared_in_yaml: ClassVar[tuple[str, ...]] = ("fn",)
    fn: str = "???"
    max_items: int = 64  # the most recent active memories of the user
    items: bool = True  # one chunk cache per memory (composable, keyed by the memory's id and text)
    assembled: bool = True  # plus one cache of all of them in time order (exact composition)
    budget_mb: float | None = (
        1024  # activation budget of the cube (MiB); least recently used caches are evicted beyond it
    )

    def validate(self) -> None:
        positive_int(self, "max_items")
        positive(self, "budget_mb")


@uses_settings(ActivationLoadSettings)
@cube_writer
def load(cfg: DictConfig) -> dict[str, Any]:
    required(cfg, "user")
    if cfg.get("dataset") is not None or cfg.get("input") is not None:
        raise ConfigError(
            "activation loading caches the memories already in the cube; load text first with memory_type=declarative"
        )
    options = ActivationLoadSettings.from_mapping(cfg.memory_type)
    max_items = options.max_items
    embedder = hydra.utils.instantiate(cfg.embedder)
    cube, created = open_cube(cfg, embedder)
    if created:
        raise ConfigError(f"no cube at {cfg.cube_dir}; load its memories first with memory_type=declarative")
    started = time.perf_counter()
    memory = cube.activation  # loading the cube already refused caches of another model
    if memory is None:
        memory = build_activation(cfg.activation, hydra.utils.instantiate(cfg.model))
    memory.budget = ByteBudget.from_mb(options.budget_mb, memory.budget.policy)
    items = recent(cube.text.get_all({"user": str(cfg.user)}), max_items)
    added = cache_memories(memory, items, options.items, options.assembled, progress=True)
    cube.activation = memory
    summary = save_cube(cfg, cube, created)
    return {
        **summary,
        **activation_summary(memory, items, added),
        "cache_mb": memory.nbytes / 2**20,
        "seconds": time.perf_counter() - started,
    }


def cache_memories(
    memory: ActivationMemory, items: Sequence[MemoryItem], per_item: bool, assembled: bool, progress: bool = False
) -> int:
    """Encode the chunk cache of each item not cached yet (`per_item`) and the cache of all of them in order
    (`assembled`, under SET_KEY); the number of chunk caches encoded now."""
    lines = [memory_line(item) for item in items]
    new = [(item, line) for item, line in zip(items, lines, strict=True) if per_item]
    new = [(item, line) for item, line in new if not memory.has_chunk(line, item.id)]
    for item, line in tqdm(new, desc="caching memories", unit="item", disable=not progress):
        memory.chunk_cache(line, item.id)
    if assembled and items and (SET_KEY not in memory.keys() or memory.texts(SET_KEY) != lines):
        memory.add_set(SET_KEY, lines)
    return len(new)


def activation_summary(memory: ActivationMemory, items: Sequence[MemoryItem], added: int) -> dict[str, Any]:
    entries = memory.stats()
    return {
        "model": memory.model.name,
        "memories": len(items),
        "caches_added": added,
        "caches_total": len(entries),
        "cached_tokens": sum(e.tokens for e in entries),
        "cache_bytes": memory.nbytes,
    }


def recent(items: list[MemoryItem], limit: int) -> list[MemoryItem]:
    """The `limit` most recent items, oldest first (items without a time count as oldest)."""
    ordered = sorted(items, key=lambda item: (item.metadata.event_time or "", item.metadata.created_at))
    return ordered[-limit:]
