"""`relevance`: the entry least similar to the current turn leaves first (retrieval score for this turn)."""

from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext


class RelevancePolicy(SchedulingPolicy):
    name = "relevance"

    def priority(self, entry: Entry, context: TurnContext) -> float:
        return entry.relevance
