"""`lfu`: the entry used least often leaves first (ties: least recently used)."""

from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext


class LFUPolicy(SchedulingPolicy):
    name = "lfu"

    def priority(self, entry: Entry, context: TurnContext) -> float:
        return float(entry.uses)
