"""Finding the runs under a set of folders and reading what each one left behind."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memos_lab.errors import DataError
from memos_lab.experiments.common import PER_QUERY_ARTIFACT
from memos_lab.runner import CONFIG_FILE, PROVENANCE_FILE, read_metrics

HYDRA_DIR = ".hydra"
MULTIRUN_FILE = "multirun.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
JOB_SUBDIR = "${hydra.job.num}"
# Overrides that do not make a different configuration: seeds are averaged over, resume only skips work.
NOT_A_SETTING = frozenset({"seed", "resume"})
DEFAULT = "(default)"


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
        try:
            return json.loads((self.path / f"{PER_QUERY_ARTIFACT}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}


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
    config = _load_yaml(path / CONFIG_FILE) or _load_yaml(path / HYDRA_DIR / "config.yaml")
    config = config if isinstance(config, dict) else {}
    experiment = (config.get("experiment") or {}).get("name") if isinstance(config.get("experiment"), dict) else None
    hydra_record = (_load_yaml(path / HYDRA_DIR / "hydra.yaml") or {}).get("hydra") or {}
    choices = {key: value for key, value in (hydra_record.get("runtime") or {}).get("choices", {}).items() if value}
    seed = config.get("seed")
    record = RunRecord(
        path=path,
        experiment=str(experiment) if experiment else "(unknown)",
        seed=int(seed) if isinstance(seed, int) else None,
        overrides=parse_overrides(_load_yaml(path / HYDRA_DIR / "overrides.yaml") or []),
        config=config,
        choices=choices,
    )
    try:
        record.provenance = json.loads((path / PROVENANCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        record.provenance = {}
    try:
        record.metrics = read_metrics(path)
    except DataError as error:
        record.failure = str(error)
    return record


def unstarted_jobs(folder: Path) -> list[RunRecord]:
    """The jobs a multirun under `folder` planned but never started (no job folder: the sweep was stopped).

    Only Hydra's basic sweeper plans every job up front; other sweepers (Optuna) choose them as they go.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    missing = []
    for record_path in sorted(folder.rglob(MULTIRUN_FILE)):
        config = _load_yaml(record_path) or {}
        hydra_record = config.pop("hydra", None) or {}
        sweep = hydra_record.get("sweep") or {}
        if (hydra_record.get("sweeper") or {}).get("_target_") != BASIC_SWEEPER or sweep.get("subdir") != JOB_SUBDIR:
            continue
        task = [str(line) for line in (hydra_record.get("overrides") or {}).get("task") or []]
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)
        for number, job in enumerate(job for batch in batches for job in batch):
            path = record_path.parent / str(number)
            if not path.exists():
                seed: Any = next(
                    (line.split("=", 1)[1] for line in job if line.startswith("seed=")), config.get("seed")
                )
                missing.append(RunRecord(
                    path=path, experiment=str((config.get("experiment") or {}).get("name", "(unknown)")),
                    seed=int(seed) if str(seed).lstrip("-").isdigit() else None, overrides=parse_overrides(job),
                    config=config, choices={}, failure="never started (the sweep was stopped before this job)",
                ))  # fmt: skip
    return missing


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
    experiments = Counter(run.experiment for run in runs)
    if len(experiments) > 1:
        where = "; ".join(
            f"{name}: {count} run(s), e.g. {next(run.path for run in runs if run.experiment == name)}"
            for name, count in sorted(experiments.items())
        )
        raise DataError(f"runs of {len(experiments)} different experiments ({where}); report one experiment at a time")
    return runs


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


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
