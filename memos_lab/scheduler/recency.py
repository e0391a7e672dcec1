"""`recency`: time-decayed use count, sum of 2^(-age / half_life) over an entry's uses (LRFU, Lee et al. 2001).

A short half-life behaves like LRU, a long one like LFU; in between, a burst of use outlasts one recent touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memos_lab.scheduler.base import Entry, SchedulingPolicy, TurnContext
from memos_lab.settings import Settings, positive


@dataclass(frozen=True)
class RecencySettings(Settings):
    section: ClassVar[str] = "scheduler"
    half_life: float = 16.0  # scheduler steps (events) after which a use counts half

    def validate(self) -> None:
        positive(self, "half_life")


class RecencyPolicy(SchedulingPolicy):
    name = "recency"
    settings_class = RecencySettings

    def __init__(self, **settings: Any) -> None:
        self.settings = RecencySettings.from_mapping(settings)

    def priority(self, entry: Entry, context: TurnContext) -> float:
        half_life = self.settings.half_life
        return sum(2.0 ** (-(context.now - t) / half_life) for t in entry.use_times)
