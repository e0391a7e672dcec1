"""Runs one experiment: the only place that knows about output folders, files and trackers."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from memos_lab.atomic import atomic_write_text
from memos_lab.loggers.base import Tracker
from memos_lab.provenance import environment

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.md"
NOISY_LOGGERS = ("httpx", "sentence_transformers")  # they log per call at INFO


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_experiment(cfg: DictConfig, run_dir: Path, choices: Mapping[str, str]) -> dict[str, float]:
    """Build the tracker, call the experiment function, write metrics.json, config.yaml and report.md."""
    import hydra.utils
    import torch

    seed_everything(int(cfg.seed))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    tracker: Tracker = hydra.utils.instantiate(cfg.logger)
    experiment = hydra.utils.get_method(cfg.experiment.fn)
    tracker.start(str(run_dir), resolved)
    started = time.perf_counter()
    try:
        metrics = _checked_metrics(experiment(cfg, tracker))
    except BaseException:
        tracker.finish({}, failed=True)
        raise
    wall_s = time.perf_counter() - started
    metrics["run/wall_s"] = wall_s
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    atomic_write_text(run_dir / REPORT_FILE, render_report(cfg, choices, metrics, environment(), wall_s))
    tracker.finish(metrics)
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
    cfg: DictConfig, choices: Mapping[str, str], metrics: Mapping[str, float], env: Mapping[str, Any], wall_s: float) -> str:
    from tabulate import tabulate

    lines = [
        f"# memos_lab run: {cfg.experiment.name}",
        "",
        f"- command: `{env['command']}`",
        f"- git commit: `{env['git_commit']}`",
        f"- seed: {cfg.seed}",
        f"- wall time: {wall_s:.1f} s",
        f"- configuration: {', '.join(f'{k}={v}' for k, v in sorted(choices.items()) if v and not k.startswith('hydra'))}",
        "",
        "## Metrics",
        "",
        tabulate([(name, f"{value:.4g}") for name, value in sorted(metrics.items())], ["metric", "value"], "github"),
        "",
        "## Environment",
        "",
        tabulate(sorted(env["hardware"].items()), ["hardware", "value"], "github"),
        "",
        tabulate(sorted(env["packages"].items()), ["package", "version"], "github"),
        "",
    ]
    return "\n".join(lines)


def prepare_environment() -> None:
    """Nothing may reach a model hub at run time; users who want it unset these explicitly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
