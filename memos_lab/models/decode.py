"""The one decoder of memos_lab: prefill (reusing a cached prefix token for token), and greedy decoding of
one prompt or of a left-padded batch, with stop tokens. The KV cache, the chat, the probe, the reader and
the local generator all decode through here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from memos_lab.errors import DataError
from memos_lab.models.device import synchronize
from memos_lab.models.llm import LanguageModel

log = logging.getLogger(__name__)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share: the part of a cached prefix a prompt can reuse."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class KVCache:
    """The keys and values of every layer for `token_ids` (batch 1); treated as immutable."""

    token_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]  # per layer [1, kv_heads, tokens, head_dim]
    values: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @classmethod
    def from_dynamic(cls, cache: DynamicCache, token_ids: Sequence[int]) -> KVCache:
        """Snapshot of a working cache the caller hands over (its tensors are not copied)."""
        layers = cast(list[DynamicLayer], cache.layers)  # a DynamicCache holds initialised DynamicLayers
        keys = tuple(cast(torch.Tensor, layer.keys) for layer in layers)
        values = tuple(cast(torch.Tensor, layer.values) for layer in layers)
        if keys[0].shape[-2] != len(token_ids):
            raise ValueError(f"cache holds {keys[0].shape[-2]} tokens, {len(token_ids)} token ids given")
        return cls(tuple(int(i) for i in token_ids), keys, values)

    def working_copy(self, length: int | None = None, device: torch.device | None = None) -> DynamicCache:
        """A fresh DynamicCache holding a copy of the first `length` tokens (on `device`, e.g. the model's
        when the cache was loaded from disk); using it never touches this cache."""
        n = len(self) if length is None else length
        # DynamicLayer.update concatenates onto an empty tensor, which copies.
        return DynamicCache(
            ddp_cache_data=[
                (k[:, :, :n].to(device), v[:, :, :n].to(device)) for k, v in zip(self.keys, self.values, strict=True)
            ]
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"token_ids": torch.tensor(self.token_ids, dtype=torch.int64)}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            named[f"k.{i}"], named[f"v.{i}"] = k.contiguous(), v.contiguous()
        return named

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> KVCache:
        layers = sum(1 for name in named if name.startswith("k."))
        return cls(
            tuple(int(i) for i in named["token_ids"].tolist()),
            tuple(named[f"k.{i}"] for i in range(layers)),
            tuple(named[f"v.{i}"] for i in range(layers)),
        )


@dataclass
class Prefill:
    """The result of prefilling a prompt: next-token logits and the live cache (owned by the caller)."""

    logits: torch.Tensor  # [vocab], float32
    cache: DynamicCache
    token_ids: tuple[int, ...]
    reused: int  # prompt tokens taken from a stored cache
    computed: int  # prompt tokens run through the model

    def snapshot(self) -> KVCache:
        return KVCache.from_dynamic(self.cache, self.token_ids)


@dataclass
class Decoded:
    """A greedy answer to one prompt."""

    token_ids: list[int]  # the new tokens, without the stop token
    first_token_at: float  # perf_counter when the first new token was known (device synchronised)
    reused: int  # prompt tokens taken from a cached prefix
    cache: KVCache  # prompt + answer, less the last answer token when max_new_tokens cut it (never fed back)


def check_context(lm: LanguageModel, n_tokens: int) -> None:
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit is not None and n_tokens > limit:
        raise DataError(f"prompt of {n_tokens} tokens is longer than the context of {lm.name} ({limit} tokens)")


def stop_token_ids(lm: LanguageModel) -> set[int]:
    """End of sequence and ChatML's end of turn, where the tokenizer has them."""
    tokenizer = lm.tokenizer
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id}


def left_padded(
    lm: LanguageModel, sequences: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask and position ids of left-padded sequences (every one ends at the last column),
    on the model's device."""
    width = max(len(s) for s in sequences)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    ids = torch.full((len(sequences), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    device = lm.model.device
    return ids.to(device), mask.to(device), (mask.cumsum(-1) - 1).clamp(min=0).to(device)


@torch.no_grad()
def prefill(lm: LanguageModel, token_ids: Sequence[int], prefix: KVCache | None = None) -> Prefill:
    """Run `token_ids` through the model, reusing as much of `prefix` as matches them token for token.

    At least the last token is always computed: its logits are the answer's first token.
    """
    ids = tuple(int(i) for i in token_ids)
    if not ids:
        raise DataError("cannot prefill an empty prompt")
    check_context(lm, len(ids))
    cache, reused = _start_cache(lm, ids, prefix)
    new = torch.tensor([ids[reused:]], dtype=torch.long, device=lm.model.device)
    out = lm.model(input_ids=new, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return Prefill(out.logits[0, -1].float(), out.past_key_values, ids, reused, len(ids) - reused)


@torch.no_grad()
def greedy(
    lm: LanguageModel, token_ids: Sequence[int], max_new_tokens: int, prefix: KVCache | None = None, stop: bool = True
) -> Decoded:
    """Greedy answer to one prompt, reusing `prefix` where it matches; ends at a stop token (with `stop`)."""
    check_context(lm, len(token_ids) + max_new_tokens)
    started = prefill(lm, token_ids, prefix)
    (new,), first_token_at, cache = _decode(lm, started.logits[None], started.cache, None, None, max_new_tokens, stop)
    # Every new token but a cut-off last one was fed back, so the cache holds prompt + those.
    fed = list(started.token_ids) + new[: cache.get_seq_length() - len(started.token_ids)]
    return Decoded(new, first_token_at, started.reused, KVCache.from_dynamic(cache, fed))


@dataclass
class BatchDecoded:
    """Greedy answers to many prompts."""

    token_ids: list[list[int]]  # per prompt, without the stop token
    first_token_at: list[float]  # per prompt: perf_counter when its first token was known (once per batch)


@torch.no_grad()
def greedy_batch(
    lm: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: bool = True,
    batch_size: int = 8,
) -> BatchDecoded:
    """Greedy answers to many prompts, `batch_size` at a time: left-padded, masked, with position ids, so
    each answer is the one `greedy` gives alone (up to the float rounding of a padded batch; a batch of
    one is exactly `greedy`'s computation)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    result = BatchDecoded([], [])
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        if any(not p for p in chunk):
            raise DataError("cannot answer an empty prompt")
        if len(chunk) == 1:
            single = greedy(lm, chunk[0], max_new_tokens, stop=stop)
            answers, first_token_at = [single.token_ids], single.first_token_at
        else:
            check_context(lm, max(len(p) for p in chunk) + max_new_tokens)
            ids, mask, positions = left_padded(lm, chunk)
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
            answers, first_token_at, _ = _decode(lm, logits, out.past_key_values, mask, positions, max_new_tokens, stop)
        result.token_ids.extend(answers)
        result.first_token_at.extend([first_token_at] * len(chunk))
    return result


def _decode(
    lm: LanguageModel,
    logits: torch.Tensor,
    cache: DynamicCache,
    mask: torch.Tensor | None,
    positions: torch.Tensor | None,
    max_new_tokens: int,
    stop: bool,
) -> tuple[list[list[int]], float, DynamicCache]:
    """The greedy loop over a prefilled batch ([batch, vocab] next-token logits): argmax, feed back, repeat
    until every row has stopped or has `max_new_tokens` tokens. Returns the answers, the time the first
    tokens were known, and the cache."""
    stops = torch.tensor(sorted(stop_token_ids(lm)) if stop else [], dtype=torch.long, device=logits.device)
    rows = logits.shape[0]
    answers: list[list[int]] = [[] for _ in range(rows)]
    token = logits.argmax(-1)
    synchronize(token.device)
    first_token_at = time.perf_counter()
    if max_new_tokens <= 0:
        return answers, first_token_at, cache
    done = [False] * rows
    while True:
        ended = torch.isin(token, stops).tolist()
        for row, (value, end) in enumerate(zip(token.tolist(), ended, strict=True)):
            if not done[row]:
                done[row] = end
                if not end:
                    answers[row].append(int(value))
                done[row] = done[row] or len(answers[row]) >= max_new_tokens
        if all(done):
            return answers, first_token_at, cache
        step = token[:, None]
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
            assert positions is not None  # the callers pass mask and positions together
            positions = positions[:, -1:] + 1
        out = lm.model(
            input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1)


def _start_cache(lm: LanguageModel, ids: tuple[int, ...], prefix: KVCache | None) -> tuple[DynamicCache, int]:
    """A working cache holding the part of `prefix` that matches `ids` (never all of `ids`), and its length."""
    reused = 0
    if prefix is not None:
        shared = common_prefix_len(prefix.token_ids, ids)
        if shared < len(prefix):
            log.info("cached prefix diverges from the prompt at token %d of %d; cropping to it", shared, len(prefix))
        reused = min(shared, len(ids) - 1)
    if not reused:
        return DynamicCache(config=lm.model.config), 0
    assert prefix is not None  # reused > 0 only when there is a prefix
    return prefix.working_copy(reused, lm.model.device), reused
