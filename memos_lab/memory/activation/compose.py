"""Composing independently cached memories into one prompt prefix.

Exact mode (`KVCacheMemory.add_set`) encodes the concatenation once and reuses the longest stored prefix.
This module is the approximate, position-corrected mode in the spirit of CacheBlend: every memory chunk is
cached once behind the shared system header; to compose, each chunk's keys are re-rotated (RoPE) from the
positions they were encoded at to the positions they take in the composed prompt, and optionally the first
`recompute_frac` of each later chunk's tokens is recomputed so that they attend to the chunks before them.
(CacheBlend picks the tokens whose KV deviates most; recomputing chunk-leading tokens keeps to plain
forward passes.) What stays approximate: cached tokens of a later chunk never attended to earlier chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.kv_cache import MEMORY_SEPARATOR, MEMORY_TEMPLATE, KVCache, memory_messages, prefill
from memos_lab.models.llm import LanguageModel

_SENTINEL = "\x00MEMORIES\x00"
# RoPE variants whose rotation at position p is a fixed angle per frequency times p, so rotations compose.
_ROTATABLE_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


@dataclass(frozen=True)
class ChunkedPrompt:
    """A memory system message cut into token pieces: header + chunk_1 + ... + chunk_k + footer."""

    header: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    footer: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.header, *(i for chunk in self.chunks for i in chunk), *self.footer]


def chunked_memory_prompt(lm: LanguageModel, texts: Sequence[str], template: str = MEMORY_TEMPLATE) -> ChunkedPrompt:
    """Tokenise the memory message piece by piece, so each memory's tokens do not depend on its neighbours."""
    rendered = cast(  # tokenize=False: the rendered text
        str,
        lm.tokenizer.apply_chat_template(
            memory_messages([_SENTINEL], template), tokenize=False, add_generation_prompt=False
        ),
    )
    before, after = rendered.split(_SENTINEL)

    def encode(text: str) -> tuple[int, ...]:
        return tuple(lm.tokenizer.encode(text, add_special_tokens=False))

    pieces = [text + (MEMORY_SEPARATOR if i < len(texts) - 1 else "") for i, text in enumerate(texts)]
    return ChunkedPrompt(encode(before), tuple(encode(piece) for piece in pieces), encode(after))


def encode_chunks(lm: LanguageModel, prompt: ChunkedPrompt) -> list[KVCache]:
    """One cache per chunk, each encoded right behind the header (as if it were the only memory)."""
    return [prefill(lm, [*prompt.header, *chunk]).snapshot() for chunk in prompt.chunks]


def _inv_freq(lm: LanguageModel) -> torch.Tensor:
    rotary = getattr(getattr(lm.model, "model", None), "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if rotary is None or rope_type not in _ROTATABLE_ROPE_TYPES:
        raise ConfigError(
            f"position-corrected composition needs rotary embeddings of type {sorted(_ROTATABLE_ROPE_TYPES)}; "
            f"{lm.name} has {rope_type!r}"
        )
    return rotary.inv_freq.float()


def rerotate(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [batch, heads, tokens, head_dim] moved by `delta` positions: RoPE(p + d) = R(d) RoPE(p)."""
    angles = float(delta) * inv_freq.to(keys.device)
    emb = torch.cat((angles, angles))
    cos, sin = emb.cos(), emb.sin()
    k = keys.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # the rotate_half of Llama-style RoPE
    return (k * cos + rotated_half * sin).to(keys.dtype)


@torch.no_grad()
def compose_chunks(
    lm: LanguageModel,
    prompt: ChunkedPrompt,
    chunk_caches: Sequence[KVCache],
    recompute_frac: float = 0.0,
    reposition: bool = True,
) -> tuple[KVCache, int]:
    """The cache of header + all chunks assembled from per-chunk caches; returns it and the recomputed tokens.

    `reposition=False` reproduces MemOS's naive merge (keys keep their encoding positions, which then repeat):
    kept only as the baseline the experiment measures against.
    """
    if not 0.0 <= recompute_frac <= 1.0:
        raise ConfigError(f"recompute_frac must be within [0, 1], got {recompute_frac}")
    h = len(prompt.header)
    for chunk, cache in zip(prompt.chunks, chunk_caches, strict=True):
        if cache.token_ids != (*prompt.header, *chunk):
            raise ConfigError("a chunk cache does not hold the header and tokens of its chunk")
    inv_freq = _inv_freq(lm)
    first = chunk_caches[0]  # sits where it was encoded: exact
    keys, values, ids = [[k] for k in first.keys], [[v] for v in first.values], list(first.token_ids)
    recomputed = 0
    for chunk, cache in zip(prompt.chunks[1:], chunk_caches[1:], strict=True):
        m = math.ceil(recompute_frac * len(chunk))
        if m:
            working = DynamicCache(
                ddp_cache_data=[(torch.cat(k, -2), torch.cat(v, -2)) for k, v in zip(keys, values, strict=False)]
            )
            lm.model(
                input_ids=torch.tensor([chunk[:m]], device=lm.model.device), past_key_values=working, use_cache=True
            )
            layers = cast(list[DynamicLayer], working.layers)  # filled by the forward pass above
            for layer, (k_parts, v_parts) in enumerate(zip(keys, values, strict=False)):
                k_parts.append(cast(torch.Tensor, layers[layer].keys)[:, :, -m:])
                v_parts.append(cast(torch.Tensor, layers[layer].values)[:, :, -m:])
            recomputed += m
        # token h + j of the chunk cache moves to position len(ids) + j
        delta = len(ids) - h if reposition else 0
        for layer, (k_parts, v_parts) in enumerate(zip(keys, values, strict=False)):
            k_parts.append(rerotate(cache.keys[layer][:, :, h + m :], delta, inv_freq))
            v_parts.append(cache.values[layer][:, :, h + m :])
        ids.extend(chunk)
    composed = KVCache(tuple(ids), tuple(torch.cat(k, -2) for k in keys), tuple(torch.cat(v, -2) for v in values))
    return composed, recomputed
