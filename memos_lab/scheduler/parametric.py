"""The parametric tier: consolidate stable, often-used memories into the weights (a LoRA adapter).

A memory qualifies once it was used at least `min_uses` times while in working memory and has not
changed for `min_age` scheduler steps (an active item, never updated since). It is written as a
recitation edit: the first half of its text is the prompt, the rest the target, so the adapter learns
the memory's own words. The item stays in the declarative store; consolidation only adds a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.parametric.base import EditReport, ParametricMemory
from memos_lab.scheduler.base import Entry, MemScheduler
from memos_lab.settings import Settings, non_negative_int, positive_int

MIN_PROMPT_WORDS = 3


@dataclass(frozen=True)
class ConsolidationSettings(Settings):
    """When a working-memory entry is trained into the weights."""

    section: ClassVar[str] = "experiment.consolidation"
    instantiated: ClassVar[bool] = False
    min_uses: int = 3
    min_age: int = 32  # scheduler steps in working memory
    max_items: int = 8  # per consolidation call: training time grows with the batch

    def validate(self) -> None:
        positive_int(self, "min_uses", "max_items")
        non_negative_int(self, "min_age")


@dataclass
class Consolidator:
    parametric: ParametricMemory
    settings: ConsolidationSettings = field(default_factory=ConsolidationSettings)
    consolidated: set[str] = field(default_factory=set)

    def candidates(self, scheduler: MemScheduler) -> list[Entry]:
        """Working-memory entries that proved stable and often used, most used first."""
        now = scheduler.working.now
        ready = [
            entry
            for entry in scheduler.working.entries()
            if entry.item.id not in self.consolidated
            and entry.uses >= self.settings.min_uses
            and now - entry.admitted_at >= self.settings.min_age
            and entry.item.metadata.successor_id is None
        ]
        return sorted(ready, key=lambda entry: (-entry.uses, entry.order))[: self.settings.max_items]

    def consolidate(self, scheduler: MemScheduler) -> EditReport | None:
        """Train the current candidates into the adapter; None when there were none."""
        edits, seen = [], set()
        for entry in self.candidates(scheduler):
            edit = recitation_edit(entry.item)
            if edit is not None and edit.prompt not in seen:
                seen.add(edit.prompt)
                edits.append(edit)
        if not edits:
            return None
        report = self.parametric.edit(edits)
        self.consolidated.update(edit.edit_id for edit in edits)
        return report


def recitation_edit(item: MemoryItem) -> KnowledgeEdit | None:
    """The memory's first half as the prompt, the rest as the target; None for texts too short to split."""
    words = item.text.split()
    if len(words) < 2 * MIN_PROMPT_WORDS:
        return None
    cut = max(MIN_PROMPT_WORDS, len(words) // 2)
    speaker = item.text.split(":", 1)[0] if ":" in item.text else ""
    return KnowledgeEdit(
        edit_id=item.id,
        subject=speaker,
        relation="memory",
        prompt=" ".join(words[:cut]),
        target_new=" ".join(words[cut:]),
        metadata={"source": item.metadata.source or ""},
    )
