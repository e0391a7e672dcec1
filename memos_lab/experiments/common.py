"""Building blocks shared by experiments."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import hydra.utils
from omegaconf import DictConfig

from memos_lab.data.schema import Conversation, KnowledgeEdit
from memos_lab.errors import ConfigError, DataError
from memos_lab.models.embedder import Embedder
from memos_lab.mos import MOS
from memos_lab.settings import Settings, one_of, positive_int

Record = TypeVar("Record", Conversation, KnowledgeEdit)
# An artefact experiments may save: metric -> query id -> score; the report's paired tests read it.
PER_QUERY_ARTIFACT = "per_query"
KIND_NAMES = {Conversation: "a dialogue dataset", KnowledgeEdit: "a knowledge-update dataset"}


def load_records(cfg: DictConfig, record_type: type[Record]) -> list[Record]:
    """Instantiate `cfg.dataset` and check it yields the records this experiment needs."""
    records = list(hydra.utils.instantiate(cfg.dataset))
    if not records:
        raise DataError("the dataset is empty")
    if not all(isinstance(record, record_type) for record in records):
        found = sorted({type(record).__name__ for record in records})
        raise ConfigError(
            f"experiment {cfg.experiment.name!r} needs {KIND_NAMES[record_type]}; the chosen dataset yields {found}"
        )
    return records


def build_mos(cfg: DictConfig, embedder: Embedder) -> MOS:
    """The run's MOS (`mos=`): in this process (local), or a server's over HTTP (remote: a
    memos_lab.client.RemoteMOS, which has the same methods); its cubes hold `cfg.memory` over `embedder`."""
    factory = hydra.utils.instantiate(cfg.mos, _partial_=True)
    mos: MOS = factory(textual_memory_factory=lambda: hydra.utils.instantiate(cfg.memory, embedder=embedder))
    return mos


def require_local_mos(cfg: DictConfig, why: str) -> None:
    """ConfigError unless the run's MOS is in this process (mos=local): `why` says what needs it."""
    target = str(cfg.get("mos", {}).get("_target_", ""))
    if target and target != f"{MOS.__module__}.{MOS.from_settings.__qualname__}":
        raise ConfigError(f"experiment={cfg.experiment.name} needs mos=local: {why}")


# Units a metric may declare. Rates and shares are fractions in [0, 1] in every experiment; `_mb` metrics
# are MiB (2**20 bytes), as the activation budgets (`budget_mb`, `max_mb`) are.
UNITS = ("fraction", "ms", "s", "MiB", "KiB", "bytes", "items/s", "count", "tokens", "ratio", "logit", "bits")
LATENCY_UNITS = ("ms", "s")


@dataclass(frozen=True)
class MetricSpec(Settings):
    """One metric an experiment reports, declared as data (lm-eval's metric_list): `name` is the metric or
    a glob (`retrieval/*/recall_all@10`); `higher_is_better` is null for counts that are neither."""

    section: ClassVar[str] = "experiment.metrics"
    instantiated: ClassVar[bool] = False
    name: str = "???"
    unit: str = "???"
    higher_is_better: bool | None = None
    version: int = 1  # bumped when the definition changes, so reports never mix two definitions

    def validate(self) -> None:
        one_of(self, "unit", UNITS)
        positive_int(self, "version")

    @property
    def latency(self) -> bool:
        return self.unit in LATENCY_UNITS

    @property
    def quality(self) -> bool:
        """A score to maximise on a fixed scale (recall, accuracy, F1...)."""
        return self.unit == "fraction" and self.higher_is_better is True


def find_spec(specs: Iterable[MetricSpec], metric: str) -> MetricSpec | None:
    """The first declaration whose name or glob matches `metric`."""
    return next((spec for spec in specs if fnmatch.fnmatchcase(metric, spec.name)), None)


@dataclass(frozen=True)
class ExperimentSettings(Settings):
    """What every experiment config holds: its name, its function, the metrics it reports (declared as data)
    and the columns `python -m memos_lab report` shows by default. Experiments add their own settings."""

    section: ClassVar[str] = "experiment"
    instantiated: ClassVar[bool] = False
    declared_in_yaml: ClassVar[tuple[str, ...]] = ("name", "fn", "metrics", "report_metrics")
    name: str = "???"
    fn: str = "???"
    metrics: tuple[MetricSpec, ...] = ()
    report_metrics: tuple[str, ...] = ()
