"""`cacheblend`: CacheBlend (Yao et al., EuroSys 2025): the `recompute_frac` of the later chunks' tokens
whose KV deviates most from their cached (re-rotated) KV are recomputed through every layer.

The deviation is measured on layer `check_layer` (layer 0's KV depends on the token and its position only,
so it cannot tell): every candidate token runs through the layers before it, in context, and its fresh keys
and/or values there (`deviation`: the original CacheBlend code compares values, LMCache's keys) are compared
with the cached ones; the tokens with the largest squared difference are chosen, and kept through the
remaining layers, as the paper does. The chosen tokens then attend to the composed cache of everything before
them (the header, the exact first chunk, the re-rotated later chunks with the fresh KV of the chosen ones);
the memory message's end and the question are always computed fresh. The check pass costs about
`check_layer + 1` layers of every candidate token, reported as `Composed.selection_cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.compose.base import CompositionStrategy, FractionSettings, Layout, share
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import one_of, positive_int

# What the deviation is measured on: the original CacheBlend code compares values, LMCache's compares keys.
DEVIATIONS = ("values", "keys", "both")


@dataclass(frozen=True)
class CacheBlendSettings(FractionSettings):
    section: ClassVar[str] = "compose"
    check_layer: int = 1  # the layer whose KV deviation chooses the tokens (>= 1: layer 0 cannot tell)
    deviation: str = "both"  # values | keys | both: what is compared with the cached KV there

    def validate(self) -> None:
        super().validate()
        positive_int(self, "check_layer")
        one_of(self, "deviation", DEVIATIONS)


class CacheBlendComposition(CompositionStrategy):
    name = "cacheblend"
    needs_rope = True
    settings_class = CacheBlendSettings

    def check(self, lm: LanguageModel) -> None:
        super().check(lm)
        assert isinstance(self.settings, CacheBlendSettings)  # settings_class
        layers = lm.model.config.num_hidden_layers
        if self.settings.check_layer >= layers:
            raise ConfigError(
                f"compose.check_layer must be below the {layers} layers of {lm.name}, got {self.settings.check_layer}"
            )

    @property
    def exact(self) -> bool:
        assert isinstance(self.settings, FractionSettings)  # settings_class
        return self.settings.recompute_frac >= 1.0

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        assert isinstance(self.settings, CacheBlendSettings)  # settings_class
        candidates = layout.candidates
        m = share(self.settings.recompute_frac, len(candidates))
        if m in (0, len(candidates)):  # nothing to choose between
            return candidates[:m]
        # The tokens with no cache run too: the candidates after them must see their fresh KV.
        checked = sorted({*layout.must_compute, *candidates})
        run = layout.forward(lm, checked, stop_at=self.settings.check_layer)
        assert run.fresh is not None  # the pass stops at the check layer, which exists (check())
        k, v, cached_k, cached_v = run.fresh
        compared = {"keys": [(k, cached_k)], "values": [(v, cached_v)]}.get(
            self.settings.deviation, [(k, cached_k), (v, cached_v)]
        )
        deviation = sum(((fresh.float() - cached.float()) ** 2).sum(dim=(0, 1, 3)) for fresh, cached in compared)
        assert isinstance(deviation, torch.Tensor)  # at least one pair compared
        is_candidate = torch.tensor([p in layout.chunk_of for p in checked], device=deviation.device)
        deviation = deviation.masked_fill(~is_candidate, -1.0)  # only candidates compete
        top = torch.topk(deviation, m).indices.tolist()
        layout.selection_cost = len(checked) * (self.settings.check_layer + 1) / lm.model.config.num_hidden_layers
        return sorted(checked[i] for i in top)
