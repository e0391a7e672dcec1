"""ROME (Meng et al., 2022): one layer, a rank-one update per edit, ΔW = (v* - W k) (C⁻¹k)ᵀ / (kᵀ C⁻¹ k).

The edits of a batch are applied one after another, each on the weights the previous ones left (as
EasyEdit runs ROME on a list of edits); the target values are optimised once for the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memos_lab.errors import ConfigError
from memos_lab.memory.parametric.locate_edit import (
    EditorSettings,
    EditRequest,
    LocateThenEditMemory,
)


@dataclass(frozen=True)
class ROMESettings(EditorSettings):
    layer_span: tuple[float, float] | None = (0.17, 0.19)  # one layer: 5 of SmolLM2's 30
    stats_corpus: str = "synthetic"
    ridge: float = 1e-4  # C + ridge * mean(diag C) * I, so C is invertible whatever the corpus

    def for_depth(self, depth: int) -> ROMESettings:
        resolved = super().for_depth(depth)
        assert resolved.layers is not None  # EditorSettings.for_depth raised if there were none
        if len(resolved.layers) != 1:
            raise ConfigError(f"parametric=rome edits exactly one layer; the settings give {list(resolved.layers)}")
        return resolved


class ROMEMemory(LocateThenEditMemory):
    method = "rome"
    settings_class = ROMESettings
    settings: ROMESettings

    def _deltas(self, requests: list[EditRequest], shifts: torch.Tensor, adapter: str) -> dict[int, torch.Tensor]:
        assert self.settings.layers is not None  # for_depth resolved the layers
        (layer,) = self.settings.layers
        moment = self.statistics()[layer].double()
        moment = moment + self.settings.ridge * moment.diagonal().mean() * torch.eye(
            moment.shape[0], dtype=moment.dtype
        )
        keys, _ = self._keys_and_hidden(requests, layer, {})
        keys = keys.double()
        directions = torch.linalg.solve(moment, keys.T).T  # C⁻¹ k per edit
        delta = torch.zeros(shifts.shape[1], keys.shape[1], dtype=torch.float64)
        for key, direction, shift in zip(keys, directions, shifts.double(), strict=True):
            # v* - (W + Δ) k = δ - Δ k: the base value (W with earlier batches) is where δ was added
            residual = shift - delta @ key
            delta += torch.outer(residual, direction) / (direction @ key)
        return {layer: delta}
