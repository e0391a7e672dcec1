"""Finding the runs under a set of folders and reading what each one left behind."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.errors import HydraException

from memos_lab.artifact import MAX_JSON_BYTES, check_json, parse_json, read_bounded
from memos_lab.errors import ConfigError, DataError
from memos_lab.experiments.common import PER_QUERY_ARTIFACT, MetricSpec, find_spec
from memos_lab.reporting.escape import one_line
from memos_lab.runner import CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, RUN_METRICS, read_metrics

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

HYDRA_DIR = ".hydra"
MULTIRUN_FILE = "multirun.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
JOB_SUBDIR = "${hydra.job.num}"
# Overrides that do not make a different configuration: seeds are averaged over, resume only skips work.
NOT_A_SETTING = frozenset({"seed", "resume"})
DEFAULT = "(default)"
UNKNOWN = "(unknown)"
MAX_YAML_BYTES = 4 * 2**20  # Hydra's records of a job are a few KiB
MAX_PLANNED_JOBS = 100_000  # a multirun record planning more is not listed job by job
MAX_METRICS = 10_000  # experiments report at most a few hundred (per-category ones included)
# The largest size a value of each unit can have: beyond it a metric is corrupt, not a result (a fraction is
# at most 1 in size, allowing differences of fractions; a time of 1e10 s is three centuries).
UNIT_MAGNITUDE = {
    "fraction": 1.0, "ms": 1e13, "s": 1e10, "MiB": 1e12, "KiB": 1e15, "bytes": 1e18, "items/s": 1e15,
    "count": 1e18, "tokens": 1e18, "ratio": 1e12, "logit": 1e9, "bits": 1e12,
}  # fmt: skip
# The provenance fields the report shows, and what each must be (runner.py writes them).
PROVENANCE_FIELDS: dict[str, Any] = {
    "git_commit": str,
    "command": str,
    "hardware": dict[str, str | int | float | bool | None],
    "packages": dict[str, str | int | float | bool | None],
    "pinned": dict[str, str | int | float | bool | None],
}


@dataclass
class RunRecord:
    """One job's folder: its configuration, and its metrics or why it has none."""

    path: Path
    experiment: str
    seed: int | None
    overrides: dict[str, str]  # key -> value as given on the command line, minus NOT_A_SETTING
    config: dict[str, Any]  # the resolved config the runner wrote (Hydra's unresolved copy for early crashes)
    choices: dict[str, str]  # config group -> chosen option, from Hydra's record of the job
    metrics: dict[str, float] | None = None
    failure: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    declared: list[MetricSpec] = field(default_factory=list)  # the experiment's `experiment.metrics`
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # per_query.json, when saved

    @property
    def ok(self) -> bool:
        return self.metrics is not None

    def setting(self, key: str) -> str:
        """The value of a swept key in this run, also when the run left it at its default."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return str(self.choices[key])
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return DEFAULT
            node = node[part]
        return str(node)

    def per_query(self) -> dict[str, dict[str, float]]:
        """metric -> query id -> score, when the experiment saved them (else empty)."""
        return self.scores


def natural_key(text: str) -> list[Any]:
    """Sort multirun job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_run_dirs(folder: Path) -> list[Path]:
    """Every run folder under `folder` (itself included): one holding config.yaml or .hydra/config.yaml."""
    found = []
    for root, dirs, _ in os.walk(folder):
        here = Path(root)
        if (here / CONFIG_FILE).is_file() or (here / HYDRA_DIR / "config.yaml").is_file():
            found.append(here)
            dirs.clear()  # runs do not nest; do not walk into wandb/ and friends
        else:
            dirs[:] = [name for name in dirs if not name.startswith(".")]
    return sorted(found, key=lambda path: natural_key(str(path)))


def read_run(path: Path) -> RunRecord:
    """A run folder read as untrusted data (it may come from anyone): a malformed or hostile file makes the
    run failed, with one line saying which file and why, and never raises."""
    record = RunRecord(path=path, experiment=UNKNOWN, seed=None, overrides={}, config={}, choices={})
    try:
        config_file = path / CONFIG_FILE if (path / CONFIG_FILE).exists() else path / HYDRA_DIR / "config.yaml"
        config = _mapping(_read_yaml(config_file, {}), config_file.name)
        experiment = _mapping(config.get("experiment"), f"{config_file.name}: experiment")
        record.experiment = str(experiment.get("name") or UNKNOWN)
        seed = config.get("seed")
        record.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        record.overrides = _read_overrides(path / HYDRA_DIR / "overrides.yaml")
        record.choices = _read_choices(path / HYDRA_DIR / "hydra.yaml")
        record.declared = _declarations(experiment, config_file.name)
        record.config = config  # only once its experiment section is known to be sound
        record.provenance = _read_provenance(path / PROVENANCE_FILE)
        record.scores = _read_per_query(path / f"{PER_QUERY_ARTIFACT}.json")
        record.metrics = _plausible(read_metrics(path), record.declared)
    except DataError as error:
        record.failure = one_line(str(error))
    return record


def _plausible(metrics: dict[str, float], declared: list[MetricSpec]) -> dict[str, float]:
    """`metrics`, unless one lies outside what its declared unit allows (a 1e308 fraction), or there are
    more than any experiment reports (a table of a million columns would never finish): DataError."""
    if len(metrics) > MAX_METRICS:
        raise DataError(f"{METRICS_FILE}: {len(metrics)} metrics, more than the {MAX_METRICS} a report shows")
    for name, value in metrics.items():
        spec = find_spec([*declared, *RUN_METRICS], name)
        if spec is not None and abs(value) > UNIT_MAGNITUDE.get(spec.unit, math.inf):
            raise DataError(
                f"{METRICS_FILE}: {name} = {value:.4g} is absurd for a metric in {spec.unit} "
                f"(at most {UNIT_MAGNITUDE[spec.unit]:g} in size)"
            )
    return metrics


def _read_yaml(path: Path, absent: Any) -> Any:
    """A YAML file of a run folder, bounded and without aliases (no billion laughs); `absent` if there is none."""
    if not path.exists() and not path.is_symlink():
        return absent
    try:
        return yaml.load(read_bounded(path, MAX_YAML_BYTES), Loader=_PlainYamlLoader)  # a safe loader
    except yaml.YAMLError as error:
        raise DataError(f"{path.name}: not valid YAML ({one_line(str(error))})") from None
    except RecursionError:
        raise DataError(f"{path.name}: YAML nested too deeply") from None


class _PlainYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: what Hydra and OmegaConf write never has them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed")
        return super().compose_node(parent, index)

    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str):  # "\uD97C" escapes decode to lone surrogates, which no UTF-8 file can hold
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise yaml.YAMLError("a string holds a lone surrogate (not valid Unicode text)") from None
        return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: a {type(value).__name__}, not a mapping")
    return value


def _read_overrides(path: Path) -> dict[str, str]:
    lines = _read_yaml(path, [])
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise DataError(f"{path.name}: not a list of overrides")
    try:
        return parse_overrides(lines)
    except HydraException as error:
        raise DataError(f"{path.name}: unreadable override ({str(error).splitlines()[0]})") from None


def _read_choices(path: Path) -> dict[str, str]:
    hydra_record = _mapping(_mapping(_read_yaml(path, {}), path.name).get("hydra"), f"{path.name}: hydra")
    runtime = _mapping(hydra_record.get("runtime"), f"{path.name}: hydra.runtime")
    choices = _mapping(runtime.get("choices"), f"{path.name}: hydra.runtime.choices")
    return {str(key): str(value) for key, value in choices.items() if value}


def _declarations(experiment: dict[str, Any], where: str) -> list[MetricSpec]:
    """The metrics the run's experiment declares (`experiment.metrics`), after checking the section's lists."""
    for key in ("report_metrics", "ci_metrics", "pinned"):
        names = experiment.get(key)
        if names is not None and not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise DataError(f"{where}: experiment.{key} is not a list of names")
    declared = experiment.get("metrics") or []
    if not isinstance(declared, list) or not all(isinstance(item, dict) for item in declared):
        raise DataError(f"{where}: experiment.metrics is not a list of metric declarations")
    try:
        return [MetricSpec.from_mapping(item) for item in declared]
    except ConfigError as error:
        raise DataError(f"{where}: {error}") from None


def _read_provenance(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        return {}  # a run that crashed before writing it
    provenance = parse_json(read_bounded(path, MAX_JSON_BYTES), path.name)
    check_json(provenance, dict[str, Any], path.name)
    for key, hint in PROVENANCE_FIELDS.items():
        if key in provenance:
            check_json(provenance[key], hint, f"{path.name}: {key}")
    return provenance


def _read_per_query(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists() and not path.is_symlink():
        return {}
    scores = parse_json(read_bounded(path, MAX_JSON_BYTES), path.name)
    check_json(scores, dict[str, dict[str, float]], path.name)
    return scores


def unstarted_jobs(folder: Path) -> list[RunRecord]:
    """The jobs a multirun under `folder` planned but never started (no job folder: the sweep was stopped).

    Only Hydra's basic sweeper plans every job up front; other sweepers (Optuna) choose them as they go.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    missing = []
    for record_path in sorted(folder.rglob(MULTIRUN_FILE)):
        try:
            config = dict(_mapping(_read_yaml(record_path, {}), record_path.name))
            hydra_record = _mapping(config.pop("hydra", None), f"{record_path.name}: hydra")
            sweep = _mapping(hydra_record.get("sweep"), f"{record_path.name}: hydra.sweep")
            sweeper = _mapping(hydra_record.get("sweeper"), f"{record_path.name}: hydra.sweeper")
            if sweeper.get("_target_") != BASIC_SWEEPER or sweep.get("subdir") != JOB_SUBDIR:
                continue
            overrides = _mapping(hydra_record.get("overrides"), f"{record_path.name}: hydra.overrides")
            task = OverridesParser.create().parse_overrides([str(line) for line in overrides.get("task") or []])
            if _planned_jobs(task) > MAX_PLANNED_JOBS:
                continue  # not a sweep anyone ran: listing it would take all the memory
            batches = BasicSweeper.split_arguments(task, None)
            experiment = _mapping(config.get("experiment"), f"{record_path.name}: experiment")
        except (DataError, HydraException, TypeError):
            continue  # an unreadable sweep record: its unstarted jobs cannot be listed; the jobs found still are
        for number, job in enumerate(job for batch in batches for job in batch):
            path = record_path.parent / str(number)
            if not path.exists():
                seed = str(
                    next((line.split("=", 1)[1] for line in job if line.startswith("seed=")), config.get("seed"))
                )
                missing.append(RunRecord(
                    path=path, experiment=str(experiment.get("name") or UNKNOWN),
                    seed=int(seed) if seed.lstrip("-").isdigit() and len(seed) < 20 else None,
                    overrides=parse_overrides(job), config=config, choices={},
                    failure="never started (the sweep was stopped before this job)",
                ))  # fmt: skip
    return missing


def _planned_jobs(overrides: Sequence[Override]) -> int:
    """How many jobs the basic sweeper makes of `overrides` (counted up to just past MAX_PLANNED_JOBS)."""
    jobs = 1
    for override in overrides:
        if override.is_sweep_override():
            jobs *= max(1, sum(1 for _ in itertools.islice(override.sweep_string_iterator(), MAX_PLANNED_JOBS + 1)))
        jobs = min(jobs, MAX_PLANNED_JOBS + 1)
    return jobs


def parse_overrides(lines: list[str]) -> dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    settings = {}
    for override in OverridesParser.create().parse_overrides([str(line) for line in lines]):
        key = override.key_or_group
        if key not in NOT_A_SETTING:
            settings[key] = "(deleted)" if override.is_delete() else override.get_value_element_as_str()
    return settings


def collect_runs(folders: list[Path]) -> list[RunRecord]:
    """All runs under `folders`, all of one experiment; DataError explaining what was found otherwise."""
    runs: list[RunRecord] = []
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"no such folder: {folder}")
        found = [path for path in find_run_dirs(folder) if path.resolve() not in seen]
        unstarted = [run for run in unstarted_jobs(folder) if run.path.resolve() not in seen]
        if not found and not unstarted:
            entries = sorted(entry.name for entry in folder.iterdir())
            held = f"it holds {len(entries)} entries ({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''})"
            raise DataError(
                f"no runs under {folder}: a run folder holds {CONFIG_FILE} or {HYDRA_DIR}/config.yaml; "
                + (held if entries else "it is empty")
            )
        seen.update(path.resolve() for path in found)
        seen.update(run.path.resolve() for run in unstarted)
        runs += sorted([read_run(path) for path in found] + unstarted, key=lambda run: natural_key(str(run.path)))
    experiments = Counter(run.experiment for run in runs if run.experiment != UNKNOWN)  # unreadable: failed
    if len(experiments) > 1:
        where = "; ".join(
            f"{name}: {count} run(s), e.g. {next(run.path for run in runs if run.experiment == name)}"
            for name, count in sorted(experiments.items())
        )
        raise DataError(f"runs of {len(experiments)} different experiments ({where}); report one experiment at a time")
    return runs


def experiment_of(runs: Sequence[RunRecord]) -> str:
    """The experiment the runs ran (collect_runs checked there is one), or UNKNOWN when no config was readable."""
    return next((run.experiment for run in runs if run.experiment != UNKNOWN), UNKNOWN)


def pinned_values(run: RunRecord) -> dict[str, str]:
    """The run's `experiment.pinned` settings, as its provenance recorded them (else from its config)."""
    recorded = run.provenance.get("pinned")
    if isinstance(recorded, dict):
        return {str(key): str(value) for key, value in recorded.items()}
    keys = (run.config.get("experiment") or {}).get("pinned") or []
    return {str(key): run.setting(str(key)) for key in keys}


def check_pinned(runs: list[RunRecord], allow_mixed: bool) -> dict[str, str]:
    """Pinned setting -> its value in every run; DataError when runs differ in one, unless `allow_mixed`
    (then the differing ones read 'mixed: a, b')."""
    seen: dict[str, dict[str, list[RunRecord]]] = {}
    for run in runs:
        for key, value in pinned_values(run).items():
            seen.setdefault(key, {}).setdefault(value, []).append(run)
    summary = {}
    for key, values in seen.items():
        if len(values) > 1 and not allow_mixed:
            where = "; ".join(
                f"{value}: {len(members)} run(s), e.g. {members[0].path}" for value, members in values.items()
            )
            raise DataError(
                f"runs differ in the pinned setting {key} ({where}); report them separately, or pass --mix-pinned"
            )
        summary[key] = next(iter(values)) if len(values) == 1 else "mixed: " + ", ".join(values)
    return summary
