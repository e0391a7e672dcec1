"""Weights & Biases tracker; offline unless the user set WANDB_MODE or `logger.mode`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from memos_lab.errors import ConfigError
from memos_lab.loggers.base import Tracker, TrackerSettings


@dataclass(frozen=True)
class WandbSettings(TrackerSettings):
    project: str = "memos_lab"
    mode: str | None = None  # offline | online | disabled; None: WANDB_MODE, else offline
    group: str | None = None  # None: a sweep's jobs share a group named after the sweep folder
    tags: tuple[str, ...] = ()
    entity: str | None = None


class WandbTracker(Tracker):
    settings_class = WandbSettings

    def __init__(
        self,
        project: str = "memos_lab",
        mode: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        entity: str | None = None,
    ) -> None:
        self.project = project
        # An explicit WANDB_MODE (e.g. after `wandb login`, "online") wins over the offline default.
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        self.group = group
        self.tags = list(tags)
        self.entity = entity
        self._run: Any = None

    def start(self, run_dir: str, config: Mapping[str, Any]) -> None:
        import wandb

        try:
            self._run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=cast(Literal["online", "offline", "disabled", "shared"], self.mode),  # wandb validates it
                group=self.group,
                tags=self.tags,
                dir=run_dir,
                config=dict(config),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except wandb.errors.UsageError as error:  # online without `wandb login`, a bad entity...
            raise ConfigError(
                f"W&B ({self.mode} mode): {error}; offline runs need nothing: logger.mode=offline"
            ) from None

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        self._run.log(dict(values), step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import wandb

        self._run.log({name: wandb.Table(columns=list(columns), data=[list(row) for row in rows])})

    def finish(self, metrics: Mapping[str, float], failed: bool = False) -> None:
        if self._run is None:
            return
        self._run.summary.update(dict(metrics))
        self._run.finish(exit_code=1 if failed else 0)
        self._run = None
