"""`memos`: MemOS's working-memory score, a weighted sum of relevance to the current turn, keyword overlap
with it and how often the entry was used (normalised by the most used entry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memos_lab.errors import ConfigError
from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext
from memos_lab.settings import Settings, non_negative


@dataclass(frozen=True)
class MemOSSettings(Settings):
    section: ClassVar[str] = "scheduler"
    relevance_weight: float = 0.5  # embedding cosine to the current turn
    keyword_weight: float = 0.3  # share of the turn's keywords the entry holds
    usage_weight: float = 0.2  # uses, normalised by the most used entry

    def validate(self) -> None:
        non_negative(self, "relevance_weight", "keyword_weight", "usage_weight")
        if not any((self.relevance_weight, self.keyword_weight, self.usage_weight)):
            raise ConfigError("scheduler: at least one of relevance_weight, keyword_weight, usage_weight must be > 0")


class MemOSPolicy(SchedulingPolicy):
    name = "memos"
    settings_class = MemOSSettings

    def __init__(self, **settings: Any) -> None:
        self.settings = MemOSSettings.from_mapping(settings)

    def priority(self, entry: Entry, context: TurnContext) -> float:
        s = self.settings
        overlap = len(entry.keywords & context.keywords) / len(context.keywords) if context.keywords else 0.0
        usage = entry.uses / context.max_uses if context.max_uses else 0.0
        return s.relevance_weight * entry.relevance + s.keyword_weight * overlap + s.usage_weight * usage
