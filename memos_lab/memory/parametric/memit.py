"""MEMIT (Meng et al., 2023): a batch of edits spread over several layers by least squares.

Each edit's target is the output of the last edited layer plus its δ; layer by layer (lowest first, each
seeing the updates below it) the remaining gap R is split evenly over the layers still to edit and
ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, with K the edits' keys at that layer and C = E[k kᵀ] (`mom2_weight` = λ).
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
class MEMITSettings(EditorSettings):
    layer_span: tuple[float, float] | None = (0.1, 0.27)  # SmolLM2-135M (30 layers): 3-8, where MEMIT edits GPT-J (28)
    clamp_norm: float = 0.75
    stats_corpus: str = "synthetic"
    mom2_weight: float = 1000.0  # λ: how strongly the keys of the statistics corpus keep their values

    def validate(self) -> None:
        super().validate()
        if self.mom2_weight < 0:
            raise ConfigError(f"parametric.mom2_weight must be >= 0, got {self.mom2_weight}")


class MEMITMemory(LocateThenEditMemory):
    method = "memit"
    settings_class = MEMITSettings
    settings: MEMITSettings

    def _deltas(self, requests: list[EditRequest], shifts: torch.Tensor, adapter: str) -> dict[int, torch.Tensor]:
        return self._spread_over_layers(requests, shifts, self._solve)

    def _solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """ΔW (d_model, d_key) with ΔW K ≈ R, keeping the statistics' keys: R Kᵀ (λ C + K Kᵀ)⁻¹."""
        moment = self.statistics()[layer].double()
        gram = self.settings.mom2_weight * moment + keys.T @ keys
        return torch.linalg.solve(gram, keys.T @ residual).T
