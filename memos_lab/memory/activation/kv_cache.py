"""KV-cache activation memory: the key/value states of memory texts, reused as the prefix of later prompts.

Exactness rules (what MemOS's own implementation gets wrong):
- a stored `KVCache` is never grown or modified; every use works on a fresh `DynamicCache` copy;
- a cache is reused only for the tokens it shares with the new prompt, checked id by id; on a mismatch it
  is cropped to the longest common prefix and the rest is recomputed (logged);
- a saved memory is an artifact (`memos_lab.artifact`): safetensors files plus a manifest holding the model
  fingerprint; another model's caches are refused, damaged files detected by size and SHA-256, and each
  cache's tensors must have the loaded model's shape and dtype.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypedDict

import torch
from safetensors.torch import save_file

from memos_lab.artifact import MANIFEST, VERSION, Artifact, check_json, read_artifact, write_artifact
from memos_lab.errors import DataError, IncompatibleError, NotFoundError
from memos_lab.memory.activation.base import ActivationMemory, ByteBudget, EntryStats, EvictionPolicy
from memos_lab.models.decode import KVCache, Prefill, common_prefix_len, greedy, prefill
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import Settings, positive

log = logging.getLogger(__name__)

KIND = "kv_cache"
MEMORY_TEMPLATE = "Memories about the user:\n{memories}"
MEMORY_SEPARATOR = "\n"


def generate(
    lm: LanguageModel, token_ids: Sequence[int], prefix: KVCache | None = None, max_new_tokens: int = 32
) -> tuple[list[int], KVCache, int]:
    """Greedy answer to `token_ids` reusing `prefix` where it matches (`decode.greedy`); returns (new token
    ids, the cache of prompt + answer, reused prompt tokens)."""
    decoded = greedy(lm, token_ids, max_new_tokens, prefix)
    return decoded.token_ids, decoded.cache, decoded.reused


def memory_messages(texts: Sequence[str], template: str = MEMORY_TEMPLATE) -> list[dict[str, str]]:
    """The chat messages that put memory texts in front of a conversation."""
    return [{"role": "system", "content": template.format(memories=MEMORY_SEPARATOR.join(texts))}]


@dataclass(frozen=True)
class KVCacheSettings(Settings):
    section: ClassVar[str] = "activation"
    budget_mb: float | None = None  # None: unbounded; least recently used (or the scheduler's policy) evicted beyond

    def validate(self) -> None:
        positive(self, "budget_mb")


class KVCacheMemory(ActivationMemory):
    """KV caches of memory texts (and of assembled sets of them), reused as exact prompt prefixes.

    A text is cached as the system message `memory_messages([text])`; a set of texts as the system message
    of their concatenation, built from the longest stored prefix. `best_prefix` finds, for any prompt, the
    stored cache sharing the most leading tokens with it.
    """

    settings_class = KVCacheSettings

    def __init__(
        self,
        model: LanguageModel,
        budget_mb: float | None = None,
        eviction: EvictionPolicy | None = None,
        template: str = MEMORY_TEMPLATE,
    ) -> None:
        KVCacheSettings(budget_mb=budget_mb)  # the one range check
        super().__init__(model, ByteBudget.from_mb(budget_mb, eviction))
        self.template = template
        self._caches: dict[str, KVCache] = {}
        self._texts: dict[str, list[str]] = {}
        self._stats: dict[str, EntryStats] = {}
        self._clock = 0

    # ---- storing ---------------------------------------------------------------------------------

    def prompt_ids(self, texts: Sequence[str]) -> list[int]:
        """Token ids of the memory system message for `texts` (no generation prompt)."""
        return self.model.encode_chat(memory_messages(texts, self.template), add_generation_prompt=False)

    def add(self, key: str, text: str) -> int:
        return len(self.add_set(key, [text]))

    def add_set(self, key: str, texts: Sequence[str]) -> KVCache:
        """Cache the concatenation of `texts` (exact composition), extending the longest stored prefix."""
        return self.add_tokens(key, self.prompt_ids(texts), texts)

    def add_tokens(self, key: str, token_ids: Sequence[int], texts: Sequence[str] = ()) -> KVCache:
        """Cache a token sequence (a memory message, a session's history), extending the longest stored prefix."""
        # prefill leaves the last token's KV in the cache too, so the snapshot covers all of `token_ids`.
        cache = prefill(self.model, token_ids, self.best_prefix(token_ids)[1]).snapshot()
        self._put(key, cache, list(texts))
        return cache

    def _put(self, key: str, cache: KVCache, texts: list[str]) -> None:
        self.budget.check_fits(key, cache.nbytes)
        if key in self._caches:
            self.remove(key)
        self._clock += 1
        self._caches[key] = cache
        self._texts[key] = texts
        self._stats[key] = EntryStats(key, cache.nbytes, len(cache), created=self._clock, last_used=self._clock)
        for victim in self.budget.overflow(list(self._stats.values()), keep=key):
            log.info("activation budget: evicting %r", victim)
            self.remove(victim)

    def remove(self, key: str) -> None:
        if key not in self._caches:
            raise NotFoundError(f"no activation entry {key!r}")
        del self._caches[key], self._texts[key], self._stats[key]

    # ---- reading ---------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._caches)

    def get(self, key: str) -> KVCache:
        if key not in self._caches:
            raise NotFoundError(f"no activation entry {key!r}")
        self._touch(key)
        return self._caches[key]

    def texts(self, key: str) -> list[str]:
        return list(self._texts[key])

    def stats(self) -> list[EntryStats]:
        return [EntryStats(**vars(s)) for s in self._stats.values()]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._caches.values())

    def best_prefix(self, token_ids: Sequence[int]) -> tuple[str | None, KVCache | None]:
        """The stored cache sharing the most leading tokens with `token_ids` (None if none shares any)."""
        best_key, best_len = None, 0
        for key, cache in self._caches.items():
            shared = common_prefix_len(cache.token_ids, token_ids)
            if shared > best_len:
                best_key, best_len = key, shared
        if best_key is None:
            return None, None
        self._touch(best_key)
        return best_key, self._caches[best_key]

    def _touch(self, key: str) -> None:
        self._clock += 1
        self._stats[key].last_used = self._clock
        self._stats[key].uses += 1

    def prefill(self, token_ids: Sequence[int], prefix: KVCache | None = None) -> Prefill:
        """Prefill `token_ids` from `prefix`, or else from the best stored prefix."""
        return prefill(self.model, token_ids, prefix if prefix is not None else self.best_prefix(token_ids)[1])

    def generate(
        self, token_ids: Sequence[int], max_new_tokens: int = 32, prefix: KVCache | None = None
    ) -> tuple[list[int], KVCache, int]:
        chosen = prefix if prefix is not None else self.best_prefix(token_ids)[1]
        return generate(self.model, token_ids, chosen, max_new_tokens)

    # ---- persistence -----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write every cache into the artifact `folder` (crash-safe: built beside it, then swapped in)."""
        entries: list[_Entry] = [
            {"key": key, "file": f"{index:05d}.safetensors", "tokens": len(cache), "texts": self._texts[key]}
            for index, (key, cache) in enumerate(self._caches.items())
        ]

        def build(staging: Path) -> None:
            for entry, cache in zip(entries, self._caches.values(), strict=True):
                save_file(cache.tensors(), str(staging / entry["file"]))

        meta = {"template": self.template, "budget_bytes": self.budget.max_bytes, "entries": entries}
        write_artifact(Path(folder), KIND, meta, build=build, fingerprint=self.model.fingerprint())

    @classmethod
    def load(cls, folder: Path, model: LanguageModel, eviction: EvictionPolicy | None = None) -> Self:
        artifact = read_artifact(Path(folder), KIND, fingerprint=model.fingerprint(), migrate=_from_version_1)
        artifact.check_meta(KVCacheMeta)
        meta = artifact.meta
        _check_template(meta["template"], artifact.where("meta.template"))
        budget = meta["budget_bytes"]
        memory = cls(model, None if budget is None else budget / 2**20, eviction, meta["template"])
        for i, entry in enumerate(meta["entries"]):
            memory._put(entry["key"], _read_entry(artifact, entry, model, f"meta.entries[{i}]"), entry["texts"])
        return memory


class _Entry(TypedDict):
    key: str
    file: str
    tokens: int
    texts: list[str]


class KVCacheMeta(TypedDict):
    template: str
    budget_bytes: int | None
    entries: list[_Entry]


def _check_template(template: str, where: str) -> None:
    """A stored template may only hold the one `{memories}` field: str.format could otherwise read attributes."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:
        raise DataError(f"{where}: not a format template ({error})") from None
    if fields != [("memories", "", None)]:
        raise DataError(f"{where}: must hold the field {{memories}} once and no other field")


def _read_entry(artifact: Artifact, entry: _Entry, model: LanguageModel, field: str) -> KVCache:
    """The cache of one manifest entry, checked against the model: layers, heads, head size, dtype, vocabulary."""
    path = artifact.folder / entry["file"]
    if entry["file"] not in artifact.files:
        raise DataError(f"{artifact.where(field + '.file')}: {entry['file']!r} is not a listed file")
    named = artifact.read_tensors(entry["file"])
    config = model.model.config
    layers = config.num_hidden_layers
    expected = {"token_ids", *(f"k.{i}" for i in range(layers)), *(f"v.{i}" for i in range(layers))}
    if set(named) != expected:
        raise IncompatibleError(
            f"{path}: holds tensors {sorted(named)[:4]}..., not the {layers} layers of model {model.name}"
        )
    ids = named["token_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 1 or len(ids) != entry["tokens"]:
        raise DataError(f"{path}: token_ids must be {entry['tokens']} int64 ids ({artifact.where(field + '.tokens')})")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        raise IncompatibleError(f"{path}: token ids outside the vocabulary of model {model.name}")
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (1, heads, len(ids), head_dim)
    for name in sorted(expected - {"token_ids"}):
        tensor = named[name]
        if tuple(tensor.shape) != shape or tensor.dtype != model.model.dtype:
            raise IncompatibleError(
                f"{path}: {name} is {tuple(tensor.shape)} {tensor.dtype}; model {model.name} makes {shape} {model.model.dtype}"
            )
    return KVCache.from_tensors(named)


def _from_version_1(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A KV-cache manifest written before the artifact module (`format_version` 1): sizes and hashes were
    kept per entry; they become the file list."""
    where = f"{folder / MANIFEST}"
    if raw.get("format_version") != 1:
        raise IncompatibleError(f"{where}: not a saved KV-cache memory (format {raw.get('format_version')!r})")
    check_json(raw.get("entries"), list[_EntryVersion1], where, prefix="entries")
    entries = raw["entries"]
    return {
        "format": "memos_lab.artifact",
        "version": VERSION,
        "kind": KIND,
        "created_at": "",
        "fingerprint": raw.get("fingerprint"),
        "meta": {
            "template": raw.get("template"),
            "budget_bytes": raw.get("budget_bytes"),
            "entries": [{key: e[key] for key in ("key", "file", "tokens", "texts")} for e in entries],
        },
        "files": {e["file"]: {"bytes": e["bytes"], "sha256": e["sha256"]} for e in entries},
        "children": [],
    }


class _EntryVersion1(_Entry):
    bytes: int
    sha256: str
