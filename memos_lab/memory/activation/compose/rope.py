"""Moving cached keys to other positions: RoPE rotations compose, so keys encoded at position p become the
keys of position p + d by one more rotation of d, with no forward pass."""

from __future__ import annotations

import torch

from memos_lab.errors import ConfigError
from memos_lab.models.llm import LanguageModel

# RoPE variants whose rotation at position p is a fixed angle per frequency times p, so rotations compose.
ROTATABLE_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


def inv_freq(lm: LanguageModel) -> torch.Tensor:
    """The model's RoPE frequencies; ConfigError when its positions are not rotary (or not rotatable)."""
    rotary = getattr(getattr(lm.model, "model", None), "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if rotary is None or rope_type not in ROTATABLE_ROPE_TYPES:
        raise ConfigError(
            f"position-corrected composition needs rotary embeddings of type {sorted(ROTATABLE_ROPE_TYPES)}; "
            f"{lm.name} has {rope_type!r}"
        )
    return rotary.inv_freq.float()


def rerotate(keys: torch.Tensor, delta: int | torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Keys [batch, heads, tokens, head_dim] moved by `delta` positions (one shift, or one per token):
    RoPE(p + d) = R(d) RoPE(p)."""
    shifts = torch.as_tensor(delta, dtype=torch.float32, device=keys.device)
    angles = shifts[..., None] * frequencies.to(keys.device)  # [head_dim / 2] or [tokens, head_dim / 2]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    k = keys.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # the rotate_half of Llama-style RoPE
    return (k * cos + rotated_half * sin).to(keys.dtype)
