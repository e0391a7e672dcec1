"""AlphaEdit (Fang et al., 2025): MEMIT's layer-by-layer update, projected onto the null space of the
preserved keys, so later edits leave the statistics' keys and earlier edits alone.

P projects onto the eigenvectors of C = E[k kᵀ] whose eigenvalues are below `nullspace_threshold`
(relative to the largest). Per layer, ΔWᵀ = (P (K Kᵀ + Kₚ Kₚᵀ) + l2 I)⁻¹ P K Rᵀ, with Kₚ the keys of the
adapter's earlier edits; ΔW Kₚ is held near zero by the Kₚ term, ΔW k₀ ≈ 0 for C's keys by P.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError
from memos_lab.memory.parametric.base import EditReport
from memos_lab.memory.parametric.locate_edit import EditorSettings, EditRequest, LocateThenEditMemory


@dataclass(frozen=True)
class AlphaEditSettings(EditorSettings):
    layer_span: tuple[float, float] | None = (0.1, 0.27)  # as MEMIT's
    clamp_norm: float = 0.75
    stats_corpus: str = "synthetic"
    nullspace_threshold: float = 1e-2  # eigenvalues of C below this fraction of the largest span the null space
    l2: float = 1.0  # ridge on the projected solve: smaller fits the edits more exactly

    def validate(self) -> None:
        super().validate()
        if not 0 < self.nullspace_threshold < 1 or self.l2 <= 0:
            raise ConfigError("parametric: nullspace_threshold must be in (0, 1) and l2 positive")


class AlphaEditMemory(LocateThenEditMemory):
    method = "alphaedit"
    settings_class = AlphaEditSettings
    settings: AlphaEditSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._projectors: dict[int, torch.Tensor] = {}
        self._earlier: dict[tuple[str, int], torch.Tensor] = {}  # (adapter, layer) -> Kₚ Kₚᵀ
        self._batch_keys: dict[int, torch.Tensor] = {}
        super().__init__(*args, **kwargs)

    def projector(self, layer: int) -> torch.Tensor:
        if layer not in self._projectors:
            values, vectors = torch.linalg.eigh(self.statistics()[layer].double())
            null = vectors[:, values < self.settings.nullspace_threshold * values.max()]
            self._projectors[layer] = null @ null.T
        return self._projectors[layer]

    def edit(self, edits: Sequence[KnowledgeEdit]) -> EditReport:
        name = self.active_adapter
        earlier = self.edits(name)
        assert self.settings.layers is not None  # for_depth resolved the layers
        for layer in self.settings.layers:  # after a load, the earlier edits' keys are taken afresh
            if (name, layer) not in self._earlier:
                dim = self.statistics()[layer].shape[0]
                keys = self.keys(earlier, layer).double() if earlier else torch.zeros(0, dim, dtype=torch.float64)
                self._earlier[name, layer] = keys.T @ keys
        self._batch_keys = {}
        report = super().edit(edits)
        for layer, keys in self._batch_keys.items():
            self._earlier[name, layer] = self._earlier[name, layer] + keys.T @ keys
        return report

    def _deltas(self, requests: list[EditRequest], shifts: torch.Tensor, adapter: str) -> dict[int, torch.Tensor]:
        return self._spread_over_layers(
            requests, shifts, lambda layer, keys, residual: self._solve(layer, keys, residual, adapter)
        )

    def _solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, adapter: str) -> torch.Tensor:
        """MEMIT's ΔW K ≈ R solved in the null space of the preserved keys (the module docstring)."""
        self._batch_keys[layer] = keys
        projector = self.projector(layer)
        gram = projector @ (keys.T @ keys + self._earlier[adapter, layer])
        gram = gram + self.settings.l2 * torch.eye(gram.shape[0], dtype=gram.dtype)
        return torch.linalg.solve(gram, projector @ keys.T @ residual).T
