"""KV-cache activation memory: the key/value states of memory texts, reused as the prefix of later prompts
or composed, memory by memory, into any working memory.

Two kinds of entries, under one byte budget and eviction policy:
- prefix entries (`add`, `add_set`, `add_tokens`, exactly composed sets): the cache of a token sequence
  from its first token, reused for the tokens a prompt shares with it (`best_prefix`); a set composed
  approximately is reused only whole, by its key;
- chunk entries (`chunk_cache`): one memory's KV encoded alone right behind the memory message's header,
  keyed by the memory's item id and the hash of its text; `compose` places them at their true positions
  with a `CompositionStrategy` (memos_lab/memory/activation/compose/). `invalidate(item_id)` drops every
  entry an item is part of (the MOS calls it on update, merge and delete), and a cache is only ever used
  for tokens it was computed for, checked id by id, so a stale cache is never used.

Exactness rules (what MemOS's own implementation gets wrong):
- a stored `KVCache` is never grown or modified; every use works on a fresh copy or a new composed cache;
- a cache is reused only for the tokens it shares with the new prompt, checked id by id; on a mismatch it
  is cropped to the longest common prefix and the rest is recomputed (logged);
- a saved memory is an artifact (`memos_lab.artifact`): safetensors files plus a manifest holding the model
  fingerprint; another model's caches are refused, damaged files detected by size and SHA-256, and each
  cache's tensors must have the loaded model's shape and dtype; a chunk entry made behind another
  template's header is refused (when loaded, and again when used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NotRequired, Self, TypedDict

import torch
from safetensors.torch import save_file

from memos_lab.artifact import MANIFEST, VERSION, Artifact, check_json, read_artifact, write_artifact
from memos_lab.errors import ConfigError, DataError, IncompatibleError, NotFoundError
from memos_lab.memory.activation.base import ActivationMemory, ByteBudget, EntryStats, EvictionPolicy
from memos_lab.memory.activation.compose.base import Composed, CompositionStrategy, encode_chunk
from memos_lab.memory.activation.template import (
    MEMORY_SEPARATOR,
    MEMORY_TEMPLATE,
    chunked_memory_prompt,
    encode_piece,
    memory_messages,
    template_parts,
)
from memos_lab.models.decode import KVCache, Prefill, common_prefix_len, greedy, prefill
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import Settings, positive

log = logging.getLogger(__name__)

KIND = "kv_cache"
__all__ = [
    "MEMORY_SEPARATOR",
    "MEMORY_TEMPLATE",
    "KVCache",
    "KVCacheMemory",
    "Prefill",
    "generate",
    "memory_messages",
    "prefill",
]
Kind = Literal["prefix", "approximate", "chunk", "header"]
PREFIX: Kind = "prefix"
APPROXIMATE: Kind = (
    "approximate"  # a composed set with KV that is not a full prefill's: reused whole, never as a prefix
)
CHUNK: Kind = "chunk"
HEADER: Kind = "header"


def generate(
    lm: LanguageModel, token_ids: Sequence[int], prefix: KVCache | None = None, max_new_tokens: int = 32
) -> tuple[list[int], KVCache, int]:
    """Greedy answer to `token_ids` reusing `prefix` where it matches (`decode.greedy`); returns (new token
    ids, the cache of prompt + answer, reused prompt tokens)."""
    decoded = greedy(lm, token_ids, max_new_tokens, prefix)
    return decoded.token_ids, decoded.cache, decoded.reused


def ids_sha256(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()


@dataclass(frozen=True)
class _Info:
    """What an entry is besides its tensors."""

    texts: list[str]
    kind: Kind = PREFIX
    items: tuple[str, ...] = ()  # the memory items it holds (a chunk: its own; a composed set: its members)
    header_sha256: str | None = None  # a chunk: the header it was encoded behind


@dataclass(frozen=True)
class KVCacheSettings(Settings):
    section: ClassVar[str] = "activation"
    budget_mb: float | None = None  # None: unbounded; least recently used (or the scheduler's policy) evicted beyond

    def validate(self) -> None:
        positive(self, "budget_mb")


class KVCacheMemory(ActivationMemory):
    """KV caches of memory texts: prefixes reused exactly, and per-memory chunks composed (module docstring).

    A text is cached as the system message `memory_messages([text])`; a set of texts as the system message
    of their concatenation, built from the longest stored prefix. `best_prefix` finds, for any prompt, the
    stored prefix entry sharing the most leading tokens with it.
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
        self._info: dict[str, _Info] = {}
        self._stats: dict[str, EntryStats] = {}
        self._headers: dict[str, tuple[int, ...]] = {}
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
        self._put(key, cache, _Info(list(texts)))
        return cache

    def _put(self, key: str, cache: KVCache, info: _Info) -> None:
        self.budget.check_fits(key, cache.nbytes)
        if key in self._caches:
            self.remove(key)
        self._clock += 1
        self._caches[key] = cache
        self._info[key] = info
        self._stats[key] = EntryStats(
            key, cache.nbytes, len(cache), created=self._clock, last_used=self._clock, kind=info.kind, items=info.items
        )
        for victim in self.budget.overflow(list(self._stats.values()), keep=key):
            log.info("activation budget: evicting %r", victim)
            self.remove(victim)

    def remove(self, key: str) -> None:
        if key not in self._caches:
            raise NotFoundError(f"no activation entry {key!r}")
        del self._caches[key], self._info[key], self._stats[key]

    def invalidate(self, item_id: str) -> list[str]:
        """Drop every entry holding the memory `item_id` (its chunk, the composed sets it is in); the keys dropped."""
        stale = [key for key, info in self._info.items() if item_id in info.items]
        for key in stale:
            self.remove(key)
        return stale

    # ---- per-memory chunks and their composition ---------------------------------------------------

    def header_ids(self) -> tuple[int, ...]:
        """The memory message's tokens before its first memory (what every chunk is encoded behind)."""
        if self.template not in self._headers:
            before, _ = template_parts(self.model, self.template)
            self._headers[self.template] = encode_piece(self.model, before)
        return self._headers[self.template]

    @staticmethod
    def chunk_key(text: str, item_id: str | None = None) -> str:
        """The entry key of a memory's chunk: its item id (if any) and the hash of its text."""
        return f"chunk:{item_id or '-'}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def has_chunk(self, text: str, item_id: str | None = None) -> bool:
        return self.chunk_key(text, item_id) in self._caches

    def chunk_cache(self, text: str, item_id: str | None = None, last: bool = False) -> KVCache:
        """The KV of one memory line (with its separator, or without as the `last` one), encoded once behind
        the header and stored; chunk-only, keys at the canonical offset `len(header_ids())`."""
        cache, _ = self._chunk(text, item_id, last, encode=True)
        assert cache is not None  # encode=True always gives one
        return cache

    def write_chunk(self, text: str, item_id: str | None = None) -> int:
        _, encoded = self._chunk(text, item_id, last=False, encode=True)
        _, as_last = self._chunk(text, item_id, last=True, encode=True)  # a view unless the separator merges
        return encoded + as_last

    def _chunk(self, text: str, item_id: str | None, last: bool, encode: bool) -> tuple[KVCache | None, int]:
        """(the chunk cache, or None when it is not stored and not `encode`; tokens encoded for it now)."""
        key = self.chunk_key(text, item_id)
        cache, encoded = self._stored_chunk(
            key, encode_piece(self.model, text + MEMORY_SEPARATOR), text, item_id, encode
        )
        if not last or cache is None:
            return cache, encoded
        alone = encode_piece(self.model, text)
        if cache.token_ids[: len(alone)] == alone:  # the separator is a token of its own: a prefix view
            return cache.head(len(alone)), encoded
        last_cache, more = self._stored_chunk(key + ":last", alone, text, item_id, encode)
        return last_cache, encoded + more

    def _stored_chunk(
        self, key: str, ids: tuple[int, ...], text: str, item_id: str | None, encode: bool
    ) -> tuple[KVCache | None, int]:
        header = self.header_ids()
        if key in self._caches:
            info = self._info[key]
            if info.header_sha256 != ids_sha256(header):
                raise IncompatibleError(
                    f"activation entry {key!r} was encoded behind another template's header; "
                    f"drop it (invalidate) or rebuild the memory for template {self.template[:40]!r}"
                )
            cache = self._caches[key]
            if cache.token_ids == ids:
                self._touch(key)
                return cache, 0
            self.remove(key)  # same text, other tokens: never used
        if not encode:
            return None, 0
        header_key = f"header:{ids_sha256(header)[:16]}"
        if header_key not in self._caches and len(header) > 1:
            self._put(header_key, prefill(self.model, header).snapshot(), _Info([], HEADER))
        cache = encode_chunk(self.model, header, ids, self._caches.get(header_key))
        items = (item_id,) if item_id else ()
        self._put(key, cache, _Info([text], CHUNK, items, ids_sha256(header)))
        return cache, len(ids)

    @torch.no_grad()
    def compose(
        self,
        lines: Sequence[str],
        strategy: CompositionStrategy,
        item_ids: Sequence[str] | None = None,
        key: str | None = None,
    ) -> Composed:
        """The cache of the memory message's header and `lines` (exactly as `prompt_ids(lines)` renders
        them, tokenised line by line) composed from per-line chunk caches with `strategy`.

        Chunks without a stored cache are encoded once and stored (except for `exact`, which recomputes them
        in context and only uses stored ones); the longest stored prefix is used exactly. `item_ids[i]` names the memory of
        `lines[i]` (for `invalidate`). With `key`, the result is stored as a prefix entry under it.
        """
        strategy.check(self.model)
        if item_ids is not None and len(item_ids) != len(lines):
            raise ConfigError(f"{len(item_ids)} item ids for {len(lines)} memory lines")
        if not lines:
            raise ConfigError("compose needs at least one memory line")
        prompt = chunked_memory_prompt(self.model, lines, self.template)
        ids = list(item_ids) if item_ids is not None else [None] * len(lines)
        caches: list[KVCache | None] = []
        encoded = 0
        for i, (line, item_id) in enumerate(zip(lines, ids, strict=True)):
            cache, built = self._chunk(line, item_id, i == len(lines) - 1, strategy.fills_candidates)
            caches.append(cache)
            encoded += built
        composed = strategy.compose(self.model, prompt, caches, self.best_prefix(prompt.ids)[1])
        if key is not None:
            members = tuple(i for i in ids if i)
            kind = PREFIX if strategy.exact else APPROXIMATE
            self._put(key, composed.cache, _Info(list(lines), kind, members))
        return dataclasses.replace(composed, encoded_tokens=encoded)

    # ---- reading ---------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._caches)

    def get(self, key: str) -> KVCache:
        if key not in self._caches:
            raise NotFoundError(f"no activation entry {key!r}")
        self._touch(key)
        return self._caches[key]

    def texts(self, key: str) -> list[str]:
        return list(self._info[key].texts)

    def stats(self) -> list[EntryStats]:
        return [dataclasses.replace(s) for s in self._stats.values()]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._caches.values())

    def best_prefix(self, token_ids: Sequence[int]) -> tuple[str | None, KVCache | None]:
        """The stored prefix entry sharing the most leading tokens with `token_ids` (None if none shares any)."""
        best_key, best_len = None, 0
        for key, cache in self._caches.items():
            if self._info[key].kind in (CHUNK, APPROXIMATE):  # not a full prefill's KV from position 0
                continue
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
        entries: list[_Entry] = []
        for index, (key, cache) in enumerate(self._caches.items()):
            info = self._info[key]
            entry: _Entry = {"key": key, "file": f"{index:05d}.safetensors", "tokens": len(cache), "texts": info.texts}
            if info.kind != PREFIX or info.items:
                entry["kind"], entry["items"] = info.kind, list(info.items)
            if info.header_sha256 is not None:
                entry["header_sha256"] = info.header_sha256
            entries.append(entry)

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
            field = f"meta.entries[{i}]"
            kind = entry.get("kind", PREFIX)
            stored_header = entry.get("header_sha256")
            if (kind == CHUNK) != (stored_header is not None):
                raise DataError(f"{artifact.where(field)}: a chunk entry, and only one, names its header_sha256")
            if stored_header is not None and stored_header != ids_sha256(memory.header_ids()):
                raise IncompatibleError(
                    f"{artifact.where(field + '.header_sha256')}: chunk {entry['key']!r} was encoded behind "
                    "another template's header than the memory's template"
                )
            info = _Info(entry["texts"], kind, tuple(entry.get("items", [])), stored_header)
            memory._put(entry["key"], _read_entry(artifact, entry, model, field), info)
        return memory


class _Entry(TypedDict):
    key: str
    file: str
    tokens: int
    texts: list[str]
    kind: NotRequired[Kind]  # absent: prefix (caches saved before chunks)
    items: NotRequired[list[str]]
    header_sha256: NotRequired[str]


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
