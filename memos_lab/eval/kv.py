"""Pure metrics of KV-cache reuse: prefix sharing and analytic prefill FLOPs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
