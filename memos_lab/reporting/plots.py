"""PNG plots of a report: each metric against each swept setting, and latency against quality."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_lab.artifact import atomic_write_bytes
from memos_lab.experiments.common import MetricSpec
from memos_lab.reporting.table import Configuration

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLUMNS = 3
MAX_LINES = 8  # beyond this (e.g. an Optuna study) the other settings are not split into lines: points only


def latency_metric(metrics: Sequence[str], specs: Mapping[str, MetricSpec]) -> str | None:
    """The first chosen metric the experiment declares as a time (unit ms or s)."""
    return next((name for name in metrics if name in specs and specs[name].latency), None)


def quality_metrics(metrics: Sequence[str], specs: Mapping[str, MetricSpec]) -> list[str]:
    """The chosen metrics declared as scores to maximise on a fixed scale (recall, nDCG, accuracy...)."""
    return [name for name in metrics if name in specs and specs[name].quality]


def file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("_")


def _grid(count: int) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    columns = min(COLUMNS, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:count])


def _save(figure: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _as_numbers(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def plot_against_setting(
    configurations: Sequence[Configuration], metrics: Sequence[str], key: str, out: Path
) -> Path | None:
    """One panel per metric: mean ± std against the values of `key`, one line per value of the other settings."""
    metrics = [name for name in metrics if any(len(c.values(name)) for c in configurations)]
    if not metrics:
        return None
    x_values = list(dict.fromkeys(configuration.settings[key] for configuration in configurations))
    numbers = _as_numbers(x_values)
    positions = dict(zip(x_values, numbers if numbers else range(len(x_values)), strict=False))
    lines: dict[str, list[Configuration]] = {}
    for configuration in configurations:
        rest = ", ".join(f"{k}={v}" for k, v in configuration.settings.items() if k != key)
        lines.setdefault(rest, []).append(configuration)
    # Lines only join numeric values (a trend); categories (fusion=rrf, bm25...) get points.
    style: dict[str, Any] = {"marker": "o", "capsize": 3, **({} if numbers else {"linestyle": "none"})}
    if len(lines) > MAX_LINES:
        lines, style = {"": list(configurations)}, {**style, "linestyle": "none"}
    figure, axes = _grid(len(metrics))
    for axis, metric in zip(axes, metrics, strict=False):
        for label, members in lines.items():
            points = sorted(
                (
                    positions[c.settings[key]],
                    c.values(metric).mean(),
                    c.values(metric).std(ddof=1) if len(c.values(metric)) > 1 else 0.0,
                )
                for c in members
                if len(c.values(metric))
            )
            if points:
                xs, ys, errors = zip(*points, strict=False)
                axis.errorbar(xs, ys, yerr=errors, label=label or None, **style)
        axis.set_title(metric, fontsize=9)
        axis.set_xlabel(key)
        if not numbers:
            axis.set_xticks(range(len(x_values)), x_values, rotation=20, fontsize=8)
    if len(lines) > 1:  # one legend for all panels, below them: the labels can be long
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7)
    path = out / f"{file_stem(key)}.png"
    _save(figure, path)
    return path


def plot_latency_vs_quality(
    configurations: Sequence[Configuration], latency: str, quality: Sequence[str], out: Path
) -> Path | None:
    """One panel per quality metric; each configuration is a point (mean ± std over seeds) labelled with
    its row number (#) in the table."""
    if not quality:
        return None
    figure, axes = _grid(len(quality))
    for axis, metric in zip(axes, quality, strict=False):
        for number, configuration in enumerate(configurations, 1):
            x, y = configuration.values(latency), configuration.values(metric)
            if len(x) and len(y):
                axis.errorbar(
                    x.mean(), y.mean(), xerr=x.std(ddof=1) if len(x) > 1 else 0.0,
                    yerr=y.std(ddof=1) if len(y) > 1 else 0.0, marker="o", capsize=3,
                )  # fmt: skip
                axis.annotate(f"#{number}", (x.mean(), y.mean()), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(latency)
        axis.set_ylabel(metric)
    path = out / "latency_vs_quality.png"
    _save(figure, path)
    return path
