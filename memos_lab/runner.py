"""Runs one experiment: the only place that knows about output folders, files and trackers."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from memos_lab.artifact import MAX_JSON_BYTES, atomic_write_text, parse_json, read_bounded
from memos_lab.errors import ConfigError, DataError
from memos_lab.experiments.common import MetricSpec, find_spec
from memos_lab.loggers.base import Tracker
from memos_lab.provenance import environment, memory_provenance, model_provenance

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.md"
PROVENANCE_FILE = "provenance.json"
# The runner adds this metric last, so a metrics.json holding it was written by a finished run.
COMPLETE_MARKER = "run/wall_s"
# An experiment stopped early (Ctrl-C) may still return what it measured, flagged with this metric.
INTERRUPTED_MARKER = "run/interrupted"
log = logging.getLogger(__name__)


# The metrics the runner adds to every experiment's own declarations (experiment.metrics).
RUN_METRICS = (
    MetricSpec(name=COMPLETE_MARKER, unit="s", higher_is_better=False),
    MetricSpec(name=INTERRUPTED_MARKER, unit="count"),
)

NOISY_LOGGERS = ("httpx", "sentence_transformers")  # they log per call at INFO
ARTIFACT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RESERVED_NAMES = frozenset(Path(name).stem for name in (METRICS_FILE, CONFIG_FILE, REPORT_FILE, PROVENANCE_FILE))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _RunTracker(Tracker):
    """What the experiment sees: forwards series and tables to the configured tracker and keeps the
    artefacts, which the runner writes into the run folder once the experiment has succeeded."""

    def __init__(self, inner: Tracker) -> None:
        self.inner = inner
        self.artifacts: dict[str, Any] = {}

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        self.inner.log(values, step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.inner.log_table(name, columns, rows)

    def log_artifact(self, name: str, data: Mapping[str, Any]) -> None:
        if not ARTIFACT_NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise ValueError(f"artefact name {name!r} must be a plain file stem other than {sorted(RESERVED_NAMES)}")
        self.artifacts[name] = data
        self.inner.log_artifact(name, data)


def run_experiment(cfg: DictConfig, run_dir: Path, choices: Mapping[str, str]) -> dict[str, float]:
    """Build the tracker, call the experiment function, write metrics.json, config.yaml, report.md,
    provenance.json and the experiment's artefacts (<name>.json).

    With `resume=true`, a run folder that already holds complete metrics of the same config is not run again.
    """
    import hydra.utils
    import torch

    run_dir.mkdir(parents=True, exist_ok=True)
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    if cfg.get("resume"):
        finished = finished_metrics(run_dir, config_text)
        if finished is not None:
            log.info("resume: %s already holds the finished run of this config; skipped", run_dir)
            return _checked_objective(cfg, finished)
    seed_everything(int(cfg.seed))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.get("threads"):
        import faiss

        torch.set_num_threads(int(cfg.threads))
        faiss.omp_set_num_threads(int(cfg.threads))  # faiss spins OpenMP threads per search otherwise
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    env = environment()
    env["pinned"] = pinned_settings(cfg)
    env["models"] = model_provenance(cfg)  # also refuses an unknown device or a missing GPU, before any work
    env["memory"] = memory_provenance(cfg)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)  # a stale file from an earlier attempt would pass as this run's
    atomic_write_text(run_dir / CONFIG_FILE, config_text)
    # Written before the experiment so a crashed run still says which code and machine it ran on.
    atomic_write_text(run_dir / PROVENANCE_FILE, json.dumps(env, indent=2, sort_keys=True) + "\n")
    inner: Tracker = hydra.utils.instantiate(cfg.logger)
    tracker = _RunTracker(inner)
    experiment = hydra.utils.get_method(cfg.experiment.fn)
    inner.start(str(run_dir), resolved)
    started = time.perf_counter()
    try:
        metrics = _checked_metrics(experiment(cfg, tracker))
    except BaseException:
        inner.finish({}, failed=True)
        raise
    wall_s = time.perf_counter() - started
    _warn_undeclared(cfg, metrics)
    metrics[COMPLETE_MARKER] = wall_s
    for name, data in tracker.artifacts.items():
        atomic_write_text(run_dir / f"{name}.json", json.dumps(data, sort_keys=True) + "\n")
    atomic_write_text(run_dir / REPORT_FILE, render_report(cfg, choices, metrics, env, wall_s))
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")  # last: marks done
    inner.finish(metrics)
    return _checked_objective(cfg, metrics)  # checked after writing: the run itself is sound and kept


def _warn_undeclared(cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """A metric the experiment's YAML does not declare has no unit or direction for the report."""
    declared = [MetricSpec.from_mapping(item) for item in cfg.experiment.get("metrics") or []]
    undeclared = sorted(name for name in metrics if find_spec([*declared, *RUN_METRICS], name) is None)
    if undeclared:
        log.warning("metrics not declared in experiment.metrics (no unit for the report): %s", ", ".join(undeclared))


def pinned_settings(cfg: DictConfig) -> dict[str, str]:
    """The settings an experiment declares results depend on beyond the swept ones (`experiment.pinned`:
    prompt versions, judge model...): recorded in provenance and every report; `report` refuses to mix them."""
    return {str(key): str(OmegaConf.select(cfg, str(key), default=None)) for key in cfg.experiment.get("pinned") or []}


def _checked_objective(cfg: DictConfig, metrics: dict[str, float]) -> dict[str, float]:
    """`objective` names the metric a run returns to a sweeper; a typo must not pass as a missing value."""
    objective = cfg.get("objective")
    if objective and objective not in metrics:
        raise ConfigError(
            f"objective {objective!r} is not a metric of this experiment; valid: {', '.join(sorted(metrics))}"
        )
    return metrics


def read_metrics(run_dir: Path) -> dict[str, float]:
    """The metrics of a finished run; DataError saying why when the file is missing or incomplete."""
    path = run_dir / METRICS_FILE
    if not path.exists() and not path.is_symlink():
        raise DataError(f"no {METRICS_FILE} (the job crashed or was interrupted)")
    # strict and bounded: a run folder may come from someone else (`report` reads it)
    metrics = parse_json(read_bounded(path, MAX_JSON_BYTES), f"unreadable {METRICS_FILE}")
    if not isinstance(metrics, dict):
        raise DataError(f"{METRICS_FILE} is not a JSON object")
    try:
        metrics = _checked_metrics(metrics)
    except (TypeError, ValueError) as error:
        raise DataError(f"{METRICS_FILE}: {error}") from None
    if COMPLETE_MARKER not in metrics:
        raise DataError(f"incomplete {METRICS_FILE}: no {COMPLETE_MARKER!r}")
    if metrics.get(INTERRUPTED_MARKER):
        raise DataError(f"interrupted: {METRICS_FILE} covers only part of the run ({INTERRUPTED_MARKER}=1)")
    return metrics


def finished_metrics(run_dir: Path, config_text: str) -> dict[str, float] | None:
    """For resume: the stored metrics when this folder finished a run of the same config, else None."""
    try:
        metrics = read_metrics(run_dir)
    except DataError:
        return None  # not finished: run it (again)
    stored = cast(DictConfig, OmegaConf.create((run_dir / CONFIG_FILE).read_text()))  # a run's config is a mapping
    current = cast(DictConfig, OmegaConf.create(config_text))
    for config in (stored, current):
        config.pop("resume", None)
    if stored != current:
        differing = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
        raise ConfigError(
            f"resume: {run_dir} holds a finished run of a different config (differs in {', '.join(differing)}); "
            "resume the sweep with the same overrides and hydra.sweep.dir, or use a fresh folder"
        )
    return metrics


def _checked_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json is one flat object of metric name to finite number; anything else is a bug."""
    checked = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"experiment returned a non-numeric metric {name!r}: {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"experiment returned a non-finite metric {name!r}: {value!r}")
        checked[name] = float(value)
    return checked


def render_report(
    cfg: DictConfig, choices: Mapping[str, str], metrics: Mapping[str, float], env: Mapping[str, Any], wall_s: float
) -> str:
    from tabulate import tabulate

    lines = [
        f"# memos_lab run: {cfg.experiment.name}",
        "",
        f"- command: `{env['command']}`",
        f"- git commit: `{env['git_commit']}`",
        f"- seed: {cfg.seed}",
        f"- wall time: {wall_s:.1f} s",
        f"- configuration: {', '.join(f'{k}={v}' for k, v in sorted(choices.items()) if v and not k.startswith('hydra'))}",
        *([f"- pinned: {', '.join(f'{k}={v}' for k, v in env['pinned'].items())}"] if env.get("pinned") else []),
        "",
        "## Metrics",
        "",
        *_random_weights_notice(env),
        tabulate([(name, f"{value:.4g}") for name, value in sorted(metrics.items())], ["metric", "value"], "github"),
        "",
        "## Environment",
        "",
        tabulate(sorted(env.get("models", {}).items()), ["model", "value"], "github"),
        "",
        tabulate(sorted(env.get("memory", {}).items()), ["memory", "value"], "github"),
        "",
        tabulate(sorted(env["hardware"].items()), ["hardware", "value"], "github"),
        "",
        tabulate(sorted(env["packages"].items()), ["package", "version"], "github"),
        "",
    ]
    return "\n".join(lines)


def _random_weights_notice(env: Mapping[str, Any]) -> list[str]:
    if env.get("models", {}).get("random_weights") != "true":
        return []
    return [
        "The model has random weights (tiny_llama / random_llama): its answers mean nothing, so answer-quality "
        "metrics (qa/*, accuracy, F1, judge) from this run are not results; only speed, memory and exactness are.",
        "",
    ]


def prepare_environment() -> None:
    """Nothing may reach a model hub at run time; users who want it unset these explicitly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
