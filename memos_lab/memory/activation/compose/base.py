"""Composing independently cached memories into one working-memory KV cache (issue 21).

Each memory is cached once, alone, right behind the memory message's header (its keys sit at the canonical
offset `len(header)`). To put any set of memories in any order in front of a question, a
`CompositionStrategy` assembles their caches into the cache of `header + chunk_1 + ... + chunk_k` at their
true positions, recomputing some tokens fresh so that later memories see earlier ones. One file and one
YAML (conf/compose/) per strategy:

    exact      the longest exact prefix reused, every other token recomputed (the reference: 100% faithful)
    naive      concatenation at the positions the chunks were cached at (MemOS); nothing recomputed
    rerotate   keys moved to their true positions (RoPE), nothing recomputed
    leading    EPIC-style: the first `recompute_frac` of each later chunk's tokens recomputed
    cacheblend CacheBlend: the `recompute_frac` of later-chunk tokens whose KV deviates most, chosen on
               layer `check_layer`, recomputed through every layer

The API (other modules build on these names):
- `Composed(cache, context_tokens, recomputed_tokens, bytes_copied, selection_cost, encoded_tokens)`: what
  a composition returns; `cache` holds the whole memory message (header + chunks + footer, the footer always
  computed fresh: `prompt.ids`, equal to `KVCacheMemory.prompt_ids(lines)`) and is ready for
  `decode.prefill/greedy(prefix=...)`;
- `CompositionStrategy.compose(lm, prompt, chunk_caches, prefix=None) -> Composed`: `prompt` from
  `template.chunked_memory_prompt`, `chunk_caches[i]` the chunk-only cache of `prompt.chunks[i]` encoded
  behind `prompt.header` (`encode_chunks`, or `KVCacheMemory.chunk_cache`), or None for a chunk with no
  cache (computed fresh, exactly); `prefix` a cache whose leading tokens match the prompt (the header's, or
  a stored set's), used exactly for the tokens it shares;
- `encode_chunks(lm, prompt)`: the chunk-only caches of a prompt, the header computed once;
- the per-item store is `KVCacheMemory`: `chunk_cache(text, item_id, last)`, `invalidate(item_id)` and
  `compose(lines, strategy, item_ids, key)` (memos_lab/memory/activation/kv_cache.py).

How recomputation works (one mechanism for every strategy): the context's KV is laid out once per layer
(one `torch.cat` of views of the stored tensors into a new buffer; stored caches are never changed), then
the tokens to recompute run through the model in one forward pass, at their own positions, with an explicit
mask letting each see every key at a position up to its own. A `transformers` cache layer (`_ScatterLayer`)
writes their fresh keys and values into the buffer at every layer before attention reads it, so each
recomputed token attends to fresh KV of the recomputed tokens before it and to the cached KV of the rest.
Recomputing every token after the exact prefix is therefore a full prefill; recomputing none is pure reuse.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer, DynamicLayer, LinearAttentionCacheLayerMixin

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.compose.rope import inv_freq, rerotate
from memos_lab.memory.activation.template import ChunkedPrompt
from memos_lab.models.decode import KVCache, common_prefix_len, prefill
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import Settings, probability


@dataclass(frozen=True)
class Composed:
    """A composed working-memory cache and what building it cost."""

    cache: KVCache  # the memory message: header + all chunks at their true positions + footer, ready for decoding
    context_tokens: int  # tokens of the memory message
    recomputed_tokens: int  # tokens whose KV was computed fresh through every layer for this composition
    bytes_copied: int  # bytes read from stored caches into the new one (each stored tensor read once)
    # Work spent choosing what to recompute, in full-depth token equivalents (tokens x layers run / layers).
    selection_cost: float = 0.0
    encoded_tokens: int = 0  # tokens encoded alone to cache memories that had no cache yet (stored for reuse)

    @property
    def recomputed_frac(self) -> float:
        return self.recomputed_tokens / self.context_tokens if self.context_tokens else 0.0

    @property
    def computed_tokens(self) -> float:
        """Everything run through the model for this composition, in full-depth token equivalents."""
        return self.recomputed_tokens + self.encoded_tokens + self.selection_cost


@dataclass(frozen=True)
class FractionSettings(Settings):
    """Settings of a strategy that recomputes a share of the later chunks' tokens."""

    section: ClassVar[str] = "compose"
    recompute_frac: float = 0.15  # share of the tokens of chunks 2..k (the ones cached out of context)

    def validate(self) -> None:
        probability(self, "recompute_frac")


@dataclass(frozen=True)
class NoSettings(Settings):
    section: ClassVar[str] = "compose"


@dataclass
class Layout:
    """One composition in progress: where each context position's KV comes from, and the new buffers."""

    ids: tuple[int, ...]  # header + chunks + footer: the whole memory message
    spans: list[tuple[int, int]]  # each chunk's [start, end)
    keys: list[torch.Tensor]  # per layer [1, kv_heads, tokens, head_dim]
    values: list[torch.Tensor]
    must_compute: list[int]  # positions with no stored KV: header and footer past the prefix, chunks without a cache
    candidates: list[int]  # positions holding approximate KV: later chunks, placed from their caches
    bytes_copied: int
    selection_cost: float = 0.0
    chunk_of: dict[int, int] = field(default_factory=dict)  # candidate position -> chunk index

    def forward(self, lm: LanguageModel, positions: Sequence[int], stop_at: int | None = None) -> _Pass:
        """Run the tokens at `positions` (sorted) through the model, writing their fresh KV into the
        buffers; with `stop_at`, only up to that layer's key/value projections (see `_ScatterLayer`)."""
        index = torch.tensor(list(positions), dtype=torch.long, device=self.keys[0].device)
        kv_len = int(positions[-1]) + 1
        run = _Pass(index, kv_len, stop_at)
        layers: list[CacheLayerMixin | LinearAttentionCacheLayerMixin | DummyLayer] = [
            _ScatterLayer(k, v, run, i) for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True))
        ]
        dtype = self.keys[0].dtype
        allowed = torch.arange(kv_len, device=index.device)[None, :] <= index[:, None]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=index.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        ids = torch.tensor([[self.ids[p] for p in positions]], dtype=torch.long, device=lm.model.device)
        with contextlib.suppress(_Stopped):  # a selection pass ends at its check layer
            lm.model(
                input_ids=ids,
                position_ids=index[None],
                attention_mask=mask[None, None],
                past_key_values=Cache(layers=layers),
                use_cache=True,
                logits_to_keep=1,
            )
        return run


@dataclass
class _Pass:
    positions: torch.Tensor  # [n] positions of the tokens run, ascending
    kv_len: int  # keys visible to them: every position up to the last one
    stop_at: int | None  # the layer whose fresh keys and values are only compared, then the pass stops
    fresh: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (k, v, cached k, cached v)


class _Stopped(Exception):
    """Ends a selection pass at its check layer (nothing after it is needed)."""


class _ScatterLayer(DynamicLayer):
    """A cache layer over a composition buffer: each forward's fresh keys and values are written at their
    positions, and attention sees the buffer up to the last of them (the mask hides what lies after each)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, run: _Pass, index: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.run, self.index = run, index

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.run
        assert self.keys is not None and self.values is not None  # set in __init__
        if self.index == run.stop_at:
            cached = (self.keys[:, :, run.positions], self.values[:, :, run.positions])
            run.fresh = (key_states, value_states, *cached)
            raise _Stopped
        self.keys.index_copy_(2, run.positions, key_states)
        self.values.index_copy_(2, run.positions, value_states)
        return self.keys[:, :, : run.kv_len], self.values[:, :, : run.kv_len]


class CompositionStrategy(ABC):
    """Builds a working-memory cache from per-memory caches; a new strategy is one file + one YAML.

    Subclasses say which positions to recompute (`select`); the layout, the recomputation and the
    accounting are shared. Build one from its conf/compose YAML (`hydra.utils.instantiate(cfg.compose)`).
    """

    name: ClassVar[str]
    needs_rope: ClassVar[bool]  # places cached keys at new positions, so the model must use rotary positions
    reposition: ClassVar[bool] = True  # cached keys moved to their true positions (naive: kept where cached)
    fills_candidates: ClassVar[bool] = True  # lays out the later chunks' cached KV (exact recomputes them all)
    settings_class: ClassVar[type[Settings]] = NoSettings

    def __init__(self, **settings: Any) -> None:
        self.settings = self.settings_class.from_mapping(settings)

    @property
    def exact(self) -> bool:
        """Whether every composition equals a full prefill (the cache may then serve as an exact prefix)."""
        return False

    def describe(self) -> str:
        """The strategy and its settings, e.g. for keys of stored compositions: `cacheblend(recompute_frac=0.15)`."""
        values = ", ".join(f"{key}={value}" for key, value in self.settings.to_dict().items())
        return f"{self.name}({values})"

    def check(self, lm: LanguageModel) -> None:
        """ConfigError, in one line, when this strategy cannot run on `lm`."""
        if self.needs_rope:
            inv_freq(lm)
        implementation = str(getattr(lm.model.config, "_attn_implementation", "") or "")
        if implementation.startswith("flash"):
            raise ConfigError(
                f"compose={self.name} recomputes tokens under an explicit attention mask, which "
                f"{implementation} does not take; load {lm.name} with attn_implementation=sdpa or eager"
            )

    @abstractmethod
    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        """The candidate positions (`layout.candidates`) to recompute through every layer."""

    @torch.no_grad()
    def compose(
        self,
        lm: LanguageModel,
        prompt: ChunkedPrompt,
        chunk_caches: Sequence[KVCache | None],
        prefix: KVCache | None = None,
    ) -> Composed:
        """The cache of `prompt.ids`: header, chunks at their true positions, footer (module docstring)."""
        self.check(lm)
        layout = lay_out(lm, prompt, chunk_caches, prefix, self.reposition, self.fills_candidates)
        chosen = self.select(lm, layout) if layout.candidates else []
        fresh = sorted({*layout.must_compute, *chosen})
        if fresh:
            layout.forward(lm, fresh)
        cache = KVCache(layout.ids, tuple(layout.keys), tuple(layout.values))
        return Composed(cache, len(layout.ids), len(fresh), layout.bytes_copied, layout.selection_cost)


def share(frac: float, n: int) -> int:
    """How many of `n` tokens a recompute fraction names (rounded up: any positive fraction recomputes one)."""
    return min(n, math.ceil(frac * n - 1e-9))


def encode_chunks(lm: LanguageModel, prompt: ChunkedPrompt) -> list[KVCache]:
    """One chunk-only cache per chunk, each encoded right behind the header (as if it were the only memory)."""
    header = prefill(lm, prompt.header).snapshot() if len(prompt.header) > 1 else None
    return [encode_chunk(lm, prompt.header, chunk, header) for chunk in prompt.chunks]


def encode_chunk(
    lm: LanguageModel, header: Sequence[int], chunk: Sequence[int], header_cache: KVCache | None = None
) -> KVCache:
    """The KV of `chunk` encoded behind `header` (reusing `header_cache`), without the header's own KV."""
    ids = [*header, *chunk]
    cache = prefill(lm, ids, header_cache).snapshot()
    h = len(header)
    # clone: the chunk's slice would otherwise keep the whole prefill's storage alive
    keys = tuple(k[:, :, h:].clone() for k in cache.keys)
    values = tuple(v[:, :, h:].clone() for v in cache.values)
    return KVCache(tuple(chunk), keys, values)


def lay_out(
    lm: LanguageModel,
    prompt: ChunkedPrompt,
    chunk_caches: Sequence[KVCache | None],
    prefix: KVCache | None,
    reposition: bool,
    fill_candidates: bool,
) -> Layout:
    """The memory message's KV laid out from `prefix` and the chunk caches, one `torch.cat` per layer; the
    footer (and whatever else no cache holds) is left to compute."""
    ids = tuple(prompt.ids)
    spans = prompt.spans
    h = len(prompt.header)
    if len(chunk_caches) != len(prompt.chunks):
        raise ConfigError(f"{len(chunk_caches)} chunk caches for {len(prompt.chunks)} chunks")
    config = lm.model.config
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for i, (chunk, cache) in enumerate(zip(prompt.chunks, chunk_caches, strict=True)):
        if cache is None:
            continue
        if cache.token_ids != chunk:
            raise ConfigError(f"chunk cache {i} does not hold the tokens of chunk {i} (a stale or misplaced cache)")
        _check_shape(cache, lm, layers, heads, head_dim, f"chunk cache {i}")
    exact_end = 0
    if prefix is not None:
        _check_shape(prefix, lm, layers, heads, head_dim, "the prefix cache")
        exact_end = common_prefix_len(prefix.token_ids, ids)
    # Pieces of the context in order: (source cache, its first token, length, position shift) or a gap.
    pieces: list[tuple[KVCache | None, int, int, int]] = []
    must_compute = list(range(exact_end, h))
    candidates: list[int] = []
    chunk_of: dict[int, int] = {}
    if exact_end:
        assert prefix is not None  # exact_end > 0 only with a prefix
        pieces.append((prefix, 0, exact_end, 0))
    if h > exact_end:
        pieces.append((None, 0, h - exact_end, 0))
    for c, ((start, end), cache) in enumerate(zip(spans, chunk_caches, strict=True)):
        first = max(start, exact_end)
        if first >= end:
            continue
        if cache is None:
            must_compute.extend(range(first, end))
            pieces.append((None, 0, end - first, 0))
            continue
        if c > 0 or first > start:  # the first chunk was cached right behind the header: exact where it is
            candidates.extend(range(first, end))
            chunk_of.update(dict.fromkeys(range(first, end), c))
        placed = fill_candidates or not (c > 0 or first > start)
        shift = start - h if reposition else 0
        pieces.append((cache if placed else None, first - start, end - first, shift))
    footer = max(len(ids) - len(prompt.footer), exact_end)
    if footer < len(ids):
        must_compute.extend(range(footer, len(ids)))
        pieces.append((None, 0, len(ids) - footer, 0))
    device, dtype = lm.model.device, lm.model.dtype
    frequencies = inv_freq(lm) if reposition and any(p[0] is not None and p[3] for p in pieces) else None
    keys, values, copied = [], [], 0
    for layer in range(layers):
        k_parts, v_parts, shifts = [], [], []
        for source, first, length, shift in pieces:
            if source is None:
                k_parts.append(torch.zeros((1, heads, length, head_dim), dtype=dtype, device=device))
                v_parts.append(k_parts[-1])
                shifts.append(torch.zeros(length))
                continue
            k = source.keys[layer][:, :, first : first + length]
            v = source.values[layer][:, :, first : first + length]
            copied += k.numel() * k.element_size() + v.numel() * v.element_size()
            k_parts.append(k.to(device))
            v_parts.append(v.to(device))
            shifts.append(torch.full((length,), float(shift)))
        k_all = torch.cat(k_parts, dim=-2)
        if frequencies is not None:
            deltas = torch.cat(shifts)
            moved = int(torch.nonzero(deltas).min()) if bool(deltas.any()) else len(ids)
            k_all[:, :, moved:] = rerotate(k_all[:, :, moved:], deltas[moved:], frequencies)
        keys.append(k_all)
        values.append(torch.cat(v_parts, dim=-2))
    return Layout(ids, spans, keys, values, must_compute, candidates, copied, chunk_of=chunk_of)


def _check_shape(cache: KVCache, lm: LanguageModel, layers: int, heads: int, head_dim: int, what: str) -> None:
    """ConfigError unless `cache` has the layers, heads, head size and dtype `lm` makes."""
    shape = (1, heads, len(cache), head_dim)
    if len(cache.keys) != layers or any(
        tuple(t.shape) != shape or t.dtype != lm.model.dtype for t in (*cache.keys, *cache.values)
    ):
        got = tuple(cache.keys[0].shape) if cache.keys else ()
        raise ConfigError(
            f"{what} was made by another model: {len(cache.keys)} layers of {got}; "
            f"{lm.name} makes {layers} layers of {shape} {lm.model.dtype}"
        )
