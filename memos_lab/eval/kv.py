"""Pure metrics of KV-cache reuse: prefix sharing, analytic prefill FLOPs, and the next-token gap of an
approximate cache to an exact prefill."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memos_lab.models.decode import common_prefix_len


@dataclass(frozen=True)
class ModelDims:
    """The sizes that set a decoder's prefill cost."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @property
    def linear_params_per_layer(self) -> int:
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        gated_mlp = 3 * self.hidden * self.intermediate
        return q_and_o + k_and_v + gated_mlp


def prefill_flops(dims: ModelDims, cached: int, total: int) -> float:
    """FLOPs to compute tokens cached..total-1 of a prompt whose first `cached` tokens come from a cache.

    Per token: 2 FLOPs per weight of every layer, plus attention over all earlier positions (QK^T and AV,
    2 * 2 * heads * head_dim per attended key), plus the LM head for the last token only (logits_to_keep=1).
    """
    if not 0 <= cached < total:
        raise ValueError(f"need 0 <= cached < total, got cached={cached}, total={total}")
    new = total - cached
    linear = 2 * dims.linear_params_per_layer * dims.layers * new
    attended = total * (total + 1) // 2 - cached * (cached + 1) // 2  # sum of (p + 1) over new positions p
    attention = 4 * dims.heads * dims.head_dim * dims.layers * attended
    return float(linear + attention + 2 * dims.hidden * dims.vocab)


def perfect_prefix_reuse(prompts: Sequence[Sequence[int]], cached: Sequence[Sequence[int]] = ()) -> list[int]:
    """Tokens of each prompt a perfect prefix cache holds: the longest prefix it shares with any earlier prompt
    or any precomputed sequence, never the whole prompt (its last token must run to give logits)."""
    seen = [list(c) for c in cached]
    reuse = []
    for prompt in prompts:
        best = max((common_prefix_len(s, prompt) for s in seen), default=0)
        reuse.append(min(best, len(prompt) - 1))
        seen.append(list(prompt))
    return reuse


def next_token_kl(reference: torch.Tensor, approximate: torch.Tensor) -> float:
    """KL(reference || approximate) in bits between the next-token distributions of two logit vectors [vocab]:
    how far the approximate cache moves the prediction away from the exact prefill's."""
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(approximate.double(), dim=-1)
    return float(torch.sum(log_p.exp() * (log_p - log_q)).clamp(min=0.0)) / math.log(2)


def top1_agrees(reference: torch.Tensor, approximate: torch.Tensor) -> bool:
    """Whether both logit vectors [vocab] put the same token first."""
    return int(reference.argmax()) == int(approximate.argmax())
