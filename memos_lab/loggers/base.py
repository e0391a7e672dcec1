"""The tracker interface experiments report series and tables through (they never see W&B itself)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from memos_lab.settings import Settings


@dataclass(frozen=True)
class TrackerSettings(Settings):
    """`logger=none` has no settings; a tracker that has some extends these."""

    section: ClassVar[str] = "logger"


class Tracker:
    """Logs nothing; the base of every tracker and the one behind `logger=none`."""

    settings_class: type[Settings] = TrackerSettings

    def start(self, run_dir: str, config: Mapping[str, Any]) -> None:
        """Called once by the runner before the experiment."""

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        """One point of one or more series."""

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A small result table (per-category scores, sweep rows)."""

    def log_artifact(self, name: str, data: Mapping[str, Any]) -> None:
        """A small JSON-able result (e.g. per-query scores); the runner writes it to `<run dir>/<name>.json`."""

    def finish(self, metrics: Mapping[str, float], failed: bool = False) -> None:
        """Final metrics; called once by the runner, also when the experiment failed."""
