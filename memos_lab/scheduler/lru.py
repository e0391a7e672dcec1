"""`lru`: the entry used longest ago leaves first."""

from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext


class LRUPolicy(SchedulingPolicy):
    name = "lru"

    def priority(self, entry: Entry, context: TurnContext) -> float:
        return float(entry.last_used_at)
