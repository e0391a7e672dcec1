"""Runs -> one row per configuration (mean ± std over seeds), and paired tests between configurations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memos_lab.errors import ConfigError
from memos_lab.reporting.runs import RunRecord

MAX_DEFAULT_DEPTH = 1  # by default, metrics like retrieval/mrr, not per-category ones like retrieval/x/mrr


@dataclass
class Configuration:
    """The runs that share every setting except the seed."""

    settings: dict[str, str]  # swept key -> value
    runs: list[RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.ok]

    @property
    def failed(self) -> list[RunRecord]:
        return [run for run in self.runs if not run.ok]

    def values(self, metric: str) -> np.ndarray:
        return np.array([run.metrics[metric] for run in self.finished if run.metrics and metric in run.metrics])


@dataclass
class Comparison:
    """A paired test of one metric between two configurations, over the queries (and seeds) both ran."""

    metric: str
    control: str
    treatment: str
    pairs: int
    control_mean: float
    treatment_mean: float
    p_value: float


def swept_keys(runs: Sequence[RunRecord]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between runs (the table's columns), and the settings common to all runs."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    swept = [key for key in keys if len({run.setting(key) for run in runs}) > 1]
    common = {key: runs[0].setting(key) for key in keys if key not in swept}
    return swept, common


def group_configurations(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[Configuration]:
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(tuple(run.setting(key) for key in keys), []).append(run)
    return [Configuration(dict(zip(keys, values, strict=False)), members) for values, members in groups.items()]


def choose_metrics(runs: Sequence[RunRecord], requested: Sequence[str] | None) -> list[str]:
    """The requested metrics (checked against what the runs measured), else the experiment's
    `report_metrics`, else every metric with at most one '/'."""
    available = list(dict.fromkeys(name for run in runs if run.metrics for name in run.metrics))
    if requested:
        unknown = [name for name in requested if name not in available]
        if unknown and available:
            raise ConfigError(f"--metrics: no run measured {unknown[0]!r}; available: {', '.join(sorted(available))}")
        return list(requested)
    configured = [(run.config.get("experiment") or {}).get("report_metrics") for run in runs]
    listed = next((list(names) for names in configured if names), None)
    if listed:
        return [name for name in listed if name in available] or listed
    return sorted(name for name in available if name.count("/") <= MAX_DEFAULT_DEPTH)


def mean(values: np.ndarray) -> float:
    """The mean of finite values, without overflow when they are near the float limit (two 1e308s)."""
    scale = float(np.abs(values).max())
    return scale * float(np.mean(values / scale)) if scale > 0 else 0.0


def std(values: np.ndarray) -> float:
    """The sample standard deviation (ddof 1) of two or more finite values, scaled like `mean`."""
    scale = float(np.abs(values).max())
    return scale * float(np.std(values / scale, ddof=1)) if scale > 0 else 0.0


def format_cell(configuration: Configuration, metric: str) -> str:
    """'mean ± std' over seeds; 'failed' when no run finished, 'n/a' when the finished runs lack the metric
    (e.g. a per-category score of a category this configuration never saw); '(n=k)' when only some have it."""
    values = configuration.values(metric)
    if len(values) == 0:
        return "n/a" if configuration.finished else "failed"
    text = f"{values[0]:.4g}" if len(values) == 1 else f"{mean(values):.4g} ± {std(values):.2g}"
    return text if len(values) == len(configuration.finished) else f"{text} (n={len(values)})"


def summary_frames(
    configurations: Sequence[Configuration], metrics: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Markdown view with 'mean ± std' cells, CSV view with separate mean and std columns)."""
    shown, numeric = [], []
    for number, configuration in enumerate(configurations, 1):
        base = {
            "#": number,
            **configuration.settings,
            "seeds": len(configuration.finished),
            "failed": len(configuration.failed),
        }
        shown.append({**base, **{name: format_cell(configuration, name) for name in metrics}})
        row = dict(base)
        for name in metrics:
            values = configuration.values(name)
            row[f"{name} mean"] = mean(values) if len(values) else math.nan
            row[f"{name} std"] = std(values) if len(values) > 1 else math.nan
        numeric.append(row)
    return pd.DataFrame(shown), pd.DataFrame(numeric)


def paired_tests(configurations: Sequence[Configuration], metrics: Sequence[str]) -> list[Comparison]:
    """Paired two-sided t-tests (ranx's) per metric between every two configurations, pairing the same
    query under the same seed; only metrics whose per-query scores every finished run saved."""
    from ranx.statistical_tests import paired_student_t_test

    scores = {  # configurations are named by their row number in the table
        f"#{number}": {run.seed: run.per_query() for run in configuration.finished}
        for number, configuration in enumerate(configurations, 1)
    }
    comparisons = []
    for metric in metrics:
        for control, treatment in itertools.combinations(scores, 2):
            left, right = [], []
            for seed in sorted(set(scores[control]) & set(scores[treatment]), key=str):
                a, b = scores[control][seed].get(metric, {}), scores[treatment][seed].get(metric, {})
                for query in sorted(set(a) & set(b)):
                    left.append(a[query])
                    right.append(b[query])
            if len(left) < 2:
                continue
            control_scores, treatment_scores = np.array(left), np.array(right)
            if np.allclose(control_scores, treatment_scores):
                p_value = 1.0  # identical per-query scores: the t statistic is undefined, there is no difference
            else:
                p_value = float(paired_student_t_test(control_scores, treatment_scores)[0])
            comparisons.append(
                Comparison(
                    metric, control, treatment, len(left), control_scores.mean(), treatment_scores.mean(), p_value
                )
            )
    return comparisons
