"""`rerotate`: each chunk's keys moved to its true positions by one RoPE rotation, nothing recomputed; the
later chunks still never saw the ones before them."""

from __future__ import annotations

from memos_lab.memory.activation.compose.base import CompositionStrategy, Layout
from memos_lab.models.llm import LanguageModel


class RerotateComposition(CompositionStrategy):
    name = "rerotate"
    needs_rope = True

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        return []
