"""The one interface of activation memory (precomputed model activations, e.g. KV caches), and the byte
budget with pluggable eviction that bounds it.

An `ActivationMemory` is tied to one model: what it stores is only valid for the model that computed it,
so `load` refuses (IncompatibleError) an artefact whose model fingerprint differs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.compose.base import Composed, CompositionStrategy
from memos_lab.memory.item import ACTIVE, MemoryItem, memory_line
from memos_lab.models.decode import KVCache, Prefill
from memos_lab.models.llm import LanguageModel


@dataclass
class EntryStats:
    """What an eviction policy may look at; times are a logical clock (one tick per store or use)."""

    key: str
    nbytes: int
    tokens: int
    created: int
    last_used: int
    uses: int = 0
    kind: str = "prefix"  # prefix: a token sequence from position 0 | chunk: one memory's KV | header
    items: tuple[str, ...] = ()  # the memory items the entry holds, where known


class EvictionPolicy(ABC):
    """Chooses which entries to drop when the budget is exceeded (the scheduler plugs policies in here)."""

    @abstractmethod
    def victims(self, entries: Sequence[EntryStats], bytes_to_free: int) -> list[str]:
        """Keys to evict, in order, freeing at least `bytes_to_free` bytes if the entries allow it."""


class LRUEviction(EvictionPolicy):
    """Least recently used first."""

    def victims(self, entries: Sequence[EntryStats], bytes_to_free: int) -> list[str]:
        chosen, freed = [], 0
        for entry in sorted(entries, key=lambda e: (e.last_used, e.created)):
            if freed >= bytes_to_free:
                break
            chosen.append(entry.key)
            freed += entry.nbytes
        return chosen


class ByteBudget:
    """Keeps the total size of an activation memory under `max_bytes` (None: unbounded)."""

    def __init__(self, max_bytes: int | None = None, policy: EvictionPolicy | None = None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"activation budget must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        self.policy = policy or LRUEviction()

    @classmethod
    def from_mb(cls, budget_mb: float | None, policy: EvictionPolicy | None = None) -> ByteBudget:
        return cls(None if budget_mb is None else int(budget_mb * 2**20), policy)

    def check_fits(self, key: str, nbytes: int) -> None:
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise ConfigError(
                f"activation entry {key!r} needs {nbytes} bytes, more than the whole budget of {self.max_bytes} bytes"
            )

    def overflow(self, entries: Sequence[EntryStats], keep: str | None = None) -> list[str]:
        """Keys the policy evicts so that the entries fit the budget (never `keep`, the entry just stored)."""
        if self.max_bytes is None:
            return []
        excess = sum(e.nbytes for e in entries) - self.max_bytes
        if excess <= 0:
            return []
        candidates = [e for e in entries if e.key != keep]
        victims = self.policy.victims(candidates, excess)
        sizes = {e.key: e.nbytes for e in candidates}
        if any(key not in sizes for key in victims) or sum(sizes[key] for key in victims) < excess:
            raise ConfigError(f"eviction policy {type(self.policy).__name__} did not free {excess} bytes")
        return victims


class ActivationMemory(ABC):
    """Activations of memory texts, keyed by name, computed once with `model` and reused as prompt prefixes.

    Everything the chat, the loaders and the experiments call is declared here, so a new backend (a
    quantised KV store, say) is one file plus one YAML under conf/activation/. Constructors take
    `(model, budget_mb=None, eviction=None, template=...)`; build one with `build_activation`.
    """

    template: str  # how memory texts become the system message their activations belong to

    def __init__(self, model: LanguageModel, budget: ByteBudget | None = None) -> None:
        self.model = model
        self.budget = budget or ByteBudget()

    # ---- storing ---------------------------------------------------------------------------------

    @abstractmethod
    def add(self, key: str, text: str) -> int:
        """Compute and store the activations of a memory text; returns the number of tokens stored."""

    @abstractmethod
    def add_set(self, key: str, texts: Sequence[str]) -> KVCache:
        """Store the activations of several memory texts assembled into one system message (exactly as
        `prompt_ids(texts)` renders it), reusing the longest stored prefix."""

    @abstractmethod
    def add_tokens(self, key: str, token_ids: Sequence[int], texts: Sequence[str] = ()) -> KVCache:
        """Store the activations of a token sequence (a memory message, a session's history)."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Drop one entry (NotFoundError if unknown)."""

    @abstractmethod
    def invalidate(self, item_id: str) -> list[str]:
        """Drop every entry holding the memory item `item_id` (updated, merged or deleted); the keys dropped."""

    # ---- per-memory caches -----------------------------------------------------------------------

    @abstractmethod
    def chunk_cache(self, text: str, item_id: str | None = None, last: bool = False) -> KVCache:
        """One memory line's KV, encoded once behind the memory message's header and stored (see
        memos_lab/memory/activation/compose/base.py); `last`: without the separator that follows it."""

    @abstractmethod
    def has_chunk(self, text: str, item_id: str | None = None) -> bool:
        """Whether the chunk cache of this memory line is stored."""

    @abstractmethod
    def write_chunk(self, text: str, item_id: str | None = None) -> int:
        """Encode and store what composing this memory line anywhere in a working memory reads (its chunk
        cache, and its cache as the last line where that differs); the tokens encoded now (0: all stored)."""

    @abstractmethod
    def compose(
        self,
        lines: Sequence[str],
        strategy: CompositionStrategy,
        item_ids: Sequence[str] | None = None,
        key: str | None = None,
    ) -> Composed:
        """The memory message's cache for `lines`, composed from per-line caches with `strategy` (only
        lines without a cache are encoded); stored under `key` when given."""

    # ---- reading ---------------------------------------------------------------------------------

    @abstractmethod
    def prompt_ids(self, texts: Sequence[str]) -> list[int]:
        """Token ids of the memory system message for `texts` (no generation prompt)."""

    @abstractmethod
    def keys(self) -> list[str]:
        """Stored entry keys, oldest first."""

    @abstractmethod
    def get(self, key: str) -> KVCache:
        """One stored entry (NotFoundError if unknown)."""

    @abstractmethod
    def texts(self, key: str) -> list[str]:
        """The memory texts an entry was computed from."""

    @abstractmethod
    def stats(self) -> list[EntryStats]:
        """Size and use of every entry (copies)."""

    @abstractmethod
    def best_prefix(self, token_ids: Sequence[int]) -> tuple[str | None, KVCache | None]:
        """The stored entry sharing the most leading tokens with `token_ids` (None, None if none shares any)."""

    @abstractmethod
    def prefill(self, token_ids: Sequence[int], prefix: KVCache | None = None) -> Prefill:
        """Prefill `token_ids` from `prefix`, or else from the best stored prefix."""

    @abstractmethod
    def generate(
        self, token_ids: Sequence[int], max_new_tokens: int = 32, prefix: KVCache | None = None
    ) -> tuple[list[int], KVCache, int]:
        """Greedy answer reusing `prefix` or the best stored prefix: (new ids, cache of prompt + answer, reused)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Total bytes of stored activations."""

    # ---- persistence -----------------------------------------------------------------------------

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write everything into the fresh folder `folder` (no pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, model: LanguageModel, eviction: EvictionPolicy | None = None) -> Self:
        """Read what `save` wrote; IncompatibleError if it was made with another model or is damaged."""


@dataclass
class StoreSync:
    """Keeps an activation memory in step with one cube's store (attach it to the MOS:
    `mos.attach(StoreSync(memory, cube_id))`): a memory that is updated, merged or deleted loses its caches,
    so a stale cache is never used. With `encode_on_write`, a memory gets its chunk cache when it is written
    (added, or an update's new version), off the question's path, so composing a working memory later
    finds every chunk ready; `encoded_tokens` and `encode_s` count that work."""

    memory: ActivationMemory
    cube_id: str
    encode_on_write: bool = False
    encoded_tokens: int = 0
    encode_s: float = 0.0

    def on_add(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        if cube_id != self.cube_id or not self.encode_on_write:
            return
        started = time.perf_counter()
        for item in items:
            if item.metadata.status != ACTIVE:
                continue
            self.encoded_tokens += self.memory.write_chunk(memory_line(item), item.id)
        self.encode_s += time.perf_counter() - started

    def on_update(self, cube_id: str, old_id: str, new_item: MemoryItem) -> None:
        if cube_id == self.cube_id:
            self.memory.invalidate(old_id)
            self.on_add(cube_id, [new_item])

    def on_delete(self, cube_id: str, item_id: str) -> None:
        if cube_id == self.cube_id:
            self.memory.invalidate(item_id)


def build_activation(
    config: Any,
    model: LanguageModel,
    eviction: EvictionPolicy | None = None,
    template: str | None = None,
    **overrides: Any,
) -> ActivationMemory:
    """The activation memory of a `conf/activation/` config (its `_target_` picks the backend) on `model`."""
    import hydra.utils

    if template is not None:
        overrides["template"] = template
    # partial: Hydra would turn the model dataclass into a config if passed to instantiate itself
    return hydra.utils.instantiate(config, _partial_=True)(model=model, eviction=eviction, **overrides)
