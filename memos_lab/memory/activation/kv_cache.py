"""KV-cache activation memory: the key/value states of memory texts, reused as the prefix of later prompts.

Exactness rules (what MemOS's own implementation gets wrong):
- a stored `KVCache` is never grown or modified; every use works on a fresh `DynamicCache` copy;
- a cache is reused only for the tokens it shares with the new prompt, checked id by id; on a mismatch it
  is cropped to the longest common prefix and the rest is recomputed (logged);
- files are safetensors plus a JSON manifest holding the model fingerprint; another model's caches are
  refused, damaged files detected by size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from memos_lab.atomic import atomic_write_bytes, atomic_write_text
from memos_lab.errors import IncompatibleError, NotFoundError
from memos_lab.eval.kv import common_prefix_len
from memos_lab.memory.activation.base import ActivationMemory, ByteBudget, EntryStats, EvictionPolicy
from memos_lab.models.decode import KVCache, Prefill, greedy, prefill
from memos_lab.models.llm import LanguageModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
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


class KVCacheMemory(ActivationMemory):
    """KV caches of memory texts (and of assembled sets of them), reused as exact prompt prefixes.

    A text is cached as the system message `memory_messages([text])`; a set of texts as the system message
    of their concatenation, built from the longest stored prefix. `best_prefix` finds, for any prompt, the
    stored cache sharing the most leading tokens with it.
    """

    def __init__(
        self,
        model: LanguageModel,
        budget_mb: float | None = None,
        eviction: EvictionPolicy | None = None,
        template: str = MEMORY_TEMPLATE,
    ) -> None:
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
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for index, (key, cache) in enumerate(self._caches.items()):
            data = save_safetensors(cache.tensors())
            name = f"{index:05d}.safetensors"
            atomic_write_bytes(folder / name, data)
            entries.append(
                {
                    "key": key,
                    "file": name,
                    "tokens": len(cache),
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "texts": self._texts[key],
                }
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "fingerprint": self.model.fingerprint(),
            "template": self.template,
            "budget_bytes": self.budget.max_bytes,
            "entries": entries,
        }
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path, model: LanguageModel, eviction: EvictionPolicy | None = None) -> Self:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IncompatibleError(f"{folder}: no {MANIFEST}; not a saved KV-cache memory") from None
        except json.JSONDecodeError as error:
            raise IncompatibleError(f"{folder / MANIFEST}: damaged manifest ({error})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IncompatibleError(
                f"{folder}: KV-cache format {manifest.get('format_version')!r}, this version reads {FORMAT_VERSION}"
            )
        check_fingerprint(manifest.get("fingerprint", {}), model, folder)
        budget = manifest.get("budget_bytes")
        memory = cls(model, None if budget is None else budget / 2**20, eviction, manifest["template"])
        for entry in manifest["entries"]:
            memory._put(entry["key"], _read_entry(folder, entry), entry["texts"])
        return memory


def check_fingerprint(stored: dict[str, str], model: LanguageModel, where: Path) -> None:
    current = model.fingerprint()
    differing = sorted(k for k in set(stored) | set(current) if k != "name" and stored.get(k) != current.get(k))
    if differing:
        raise IncompatibleError(
            f"{where}: KV caches were made with model {stored.get('name')!r}, not with the loaded {current['name']!r} "
            f"(differs in {', '.join(differing)}); recompute them with this model"
        )


def _read_entry(folder: Path, entry: dict) -> KVCache:
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IncompatibleError(f"{path}: cache file missing") from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IncompatibleError(f"{path}: truncated or corrupted ({len(data)} of {entry['bytes']} bytes, hash differs)")
    try:
        cache = KVCache.from_tensors(load_safetensors(data))
    except (SafetensorError, KeyError) as error:
        raise IncompatibleError(f"{path}: unreadable cache file ({error})") from None
    if len(cache) != entry["tokens"]:
        raise IncompatibleError(f"{path}: holds {len(cache)} tokens, manifest says {entry['tokens']}")
    return cache
