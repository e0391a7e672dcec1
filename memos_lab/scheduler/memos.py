"""`memos`: MemOS's working-memory score, a weighted sum of relevance to the current turn, keyword overlap
with it and how often the entry was used (normalised by the most used entry)."""

from memos_lab.errors import ConfigError
from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext


class MemOSPolicy(SchedulingPolicy):
    name = "memos"

    def __init__(self, relevance_weight: float = 0.5, keyword_weight: float = 0.3, usage_weight: float = 0.2) -> None:
        weights = {"relevance_weight": relevance_weight, "keyword_weight": keyword_weight, "usage_weight": usage_weight}
        for key, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"scheduler.{key} must be a non-negative number, got {value!r}")
        if not any(weights.values()):
            raise ConfigError("scheduler: at least one of relevance_weight, keyword_weight, usage_weight must be > 0")
        self.relevance_weight = float(relevance_weight)
        self.keyword_weight = float(keyword_weight)
        self.usage_weight = float(usage_weight)

    def priority(self, entry: Entry, context: TurnContext) -> float:
        overlap = len(entry.keywords & context.keywords) / len(context.keywords) if context.keywords else 0.0
        usage = entry.uses / context.max_uses if context.max_uses else 0.0
        return self.relevance_weight * entry.relevance + self.keyword_weight * overlap + self.usage_weight * usage
