"""`exact`: the longest exact prefix reused, every later token recomputed: a full prefill of what the
prefix does not cover (the reference every other strategy is measured against)."""

from __future__ import annotations

from memos_lab.memory.activation.compose.base import CompositionStrategy, Layout
from memos_lab.models.llm import LanguageModel


class ExactComposition(CompositionStrategy):
    name = "exact"
    needs_rope = False
    fills_candidates = False  # all recomputed: their cached KV would never be read

    @property
    def exact(self) -> bool:
        return True

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        return list(layout.candidates)
