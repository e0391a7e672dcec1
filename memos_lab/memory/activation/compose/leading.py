"""`leading`: EPIC-style (Hu et al. 2024): the chunks are re-rotated to their true positions and the first
`recompute_frac` of each later chunk's tokens recomputed, where attention sinks form and a chunk's
boundary with the one before it matters most."""

from __future__ import annotations

from itertools import groupby

from memos_lab.memory.activation.compose.base import CompositionStrategy, FractionSettings, Layout, share
from memos_lab.models.llm import LanguageModel


class LeadingComposition(CompositionStrategy):
    name = "leading"
    needs_rope = True
    settings_class = FractionSettings

    @property
    def exact(self) -> bool:
        assert isinstance(self.settings, FractionSettings)  # settings_class
        return self.settings.recompute_frac >= 1.0

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        assert isinstance(self.settings, FractionSettings)  # settings_class
        frac = self.settings.recompute_frac
        chosen: list[int] = []
        for _, group in groupby(layout.candidates, key=layout.chunk_of.__getitem__):
            positions = list(group)
            chosen.extend(positions[: share(frac, len(positions))])
        return chosen
