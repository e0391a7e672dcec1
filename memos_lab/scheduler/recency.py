"""`recency`: time-decayed use count, sum of 2^(-age / half_life) over an entry's uses (LRFU, Lee et al. 2001).

A short half-life behaves like LRU, a long one like LFU; in between, a burst of use outlasts one recent touch.
"""

from memos_lab.errors import ConfigError
from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext


class RecencyPolicy(SchedulingPolicy):
    name = "recency"

    def __init__(self, half_life: float = 16.0) -> None:
        if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or half_life <= 0:
            raise ConfigError(f"scheduler.half_life must be a positive number of steps, got {half_life!r}")
        self.half_life = float(half_life)

    def priority(self, entry: Entry, context: TurnContext) -> float:
        return sum(2.0 ** (-(context.now - t) / self.half_life) for t in entry.use_times)
