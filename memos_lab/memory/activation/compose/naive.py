"""`naive`: the chunks' caches concatenated as cached, each keeping the positions it was encoded at (so
positions repeat across chunks) and never seeing the chunks before it. MemOS composes this way; the baseline."""

from __future__ import annotations

from memos_lab.memory.activation.compose.base import CompositionStrategy, Layout
from memos_lab.models.llm import LanguageModel


class NaiveComposition(CompositionStrategy):
    name = "naive"
    needs_rope = False
    reposition = False

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        return []
