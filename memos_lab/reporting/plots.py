"""PNG figures of a report, one per question a reader asks: how does the headline metric move with each swept
setting, how does it split by category, and which configurations are worth their latency (the Pareto frontier).

Every figure draws from one table of configurations (table.csv's shape: settings, `seeds`, `failed`, then
`M mean`, `M std` and, where known, `M ci95 low|high` per metric), so a report made from run folders and one
re-plotted from a committed table.csv draw the same figures. `--all-plots` adds the old grids: every metric
against every swept setting, and every quality metric against latency."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from memos_lab.artifact import atomic_write_bytes
from memos_lab.errors import DataError
from memos_lab.experiments.common import MetricSpec, find_spec
from memos_lab.reporting.escape import FORMULA_START, md_code, md_text

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLUMNS = 3
MAX_NAMED = 20  # configurations beyond this (an Optuna study) are coloured by row, without a legend
MAX_VALUE_CHARS = 28  # a setting's value in a label (an `experiment.grid` list can be long)
MAX_KEYS_SEARCHED = 8  # the shortest distinguishing set of settings is searched among at most this many
LOG_SPAN = 10  # a numeric setting spanning this factor or more (128..4096 tokens) gets a log axis
MAX_SETTING_PANELS = 2  # beyond this many swept settings (ablations, partial grids) one dot per configuration
NOT_CATEGORIES = frozenset({"cv"})  # retrieval/cv/M is a cross-validated variant of M, not a category of it
CI_LOW, CI_HIGH = "ci95 low", "ci95 high"  # table.csv columns `M ci95 low`: pooled bootstrap CI of M's mean
RUN_CI = ("_ci95_low", "_ci95_high")  # metrics a run reports itself (qa/f1_ci95_low): its own CI of qa/f1
DIRECTION = {True: "higher is better", False: "lower is better"}


@dataclass
class PlotTable:
    """One row per configuration, the metrics' declarations, and each configuration's label and colour."""

    frame: pd.DataFrame
    keys: list[str]  # the swept settings, as columns of frame
    metrics: list[str]  # the metrics to draw, in the report's order (each has an `M mean` column)
    specs: Mapping[str, MetricSpec]
    labels: list[str] = field(init=False)
    named_keys: list[str] = field(init=False)  # the fewest swept settings that tell the rows apart

    def __post_init__(self) -> None:
        self.frame = self.frame.reset_index(drop=True)
        self.named_keys = distinguishing_keys(self.frame, self.keys)
        self.labels = configuration_labels(self.frame, self.named_keys)

    @classmethod
    def from_csv(cls, path: Path, specs: Sequence[MetricSpec], metrics: Sequence[str] | None = None) -> PlotTable:
        """A committed table.csv: the settings are its columns between `#` and `seeds`."""
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a readable table ({type(error).__name__})") from None
        columns = list(frame.columns)
        if "seeds" not in columns:
            raise DataError(f"{path}: not a report's table.csv (no 'seeds' column)")
        keys = [column for column in columns[: columns.index("seeds")] if column != "#"]  # early tables had no '#'

        measured = [column[: -len(" mean")] for column in columns if column.endswith(" mean")]
        if metrics:
            unknown = [name for name in metrics if name not in measured]
            if unknown:
                raise DataError(f"{path}: no column {unknown[0]!r} mean; it has {', '.join(measured) or 'none'}")
        for key in keys:  # table.csv quotes a text cell that starts like a formula (escape.csv_cell); unquote it
            frame[key] = frame[key].map(lambda v: v[1:] if v.startswith("'") and v[1:].startswith(FORMULA_START) else v)
        numeric = [column for column in columns if column not in keys and column != "#"]
        for column in numeric:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        chosen = list(metrics) if metrics else [name for name in measured if not name.endswith(RUN_CI)]
        declared = {name: spec for name in measured if (spec := find_spec(specs, name)) is not None}
        return cls(frame, keys, chosen, declared)

    def mean(self, metric: str) -> np.ndarray:
        column = f"{metric} mean"
        return self.frame[column].to_numpy(float) if column in self.frame else np.full(len(self.frame), np.nan)

    def errors(self, metric: str) -> tuple[np.ndarray, np.ndarray, set[str]]:
        """Per row, the error bar below and above the mean, and which kinds of uncertainty were drawn: a
        pooled bootstrap CI, a run's own CI (one seed), the std over seeds; none (NaN) otherwise."""
        mean, frame = self.mean(metric), self.frame
        seeds = frame["seeds"].to_numpy(float) if "seeds" in frame else np.ones(len(frame))
        low, high = np.full(len(frame), np.nan), np.full(len(frame), np.nan)
        kinds: dict[str, np.ndarray] = {}
        candidates = [
            ("bootstrap 95% CI of the mean over the questions, seeds pooled", f"{metric} {CI_LOW}", f"{metric} {CI_HIGH}"),
            ("the run's own 95% CI (one seed)", f"{metric}{RUN_CI[0]} mean", f"{metric}{RUN_CI[1]} mean"),
        ]  # fmt: skip
        for kind, low_column, high_column in candidates:
            if low_column in frame and high_column in frame:
                usable = np.isnan(low) & frame[low_column].notna().to_numpy() & frame[high_column].notna().to_numpy()
                if "one seed" in kind:
                    usable &= seeds == 1
                low[usable] = frame[low_column].to_numpy(float)[usable]
                high[usable] = frame[high_column].to_numpy(float)[usable]
                kinds[kind] = usable
        std_column = f"{metric} std"
        if std_column in frame:
            std = frame[std_column].to_numpy(float)
            usable = np.isnan(low) & ~np.isnan(std)
            low[usable], high[usable] = mean[usable] - std[usable], mean[usable] + std[usable]
            kinds["± 1 sample std over seeds"] = usable
        drawn = {kind for kind, rows in kinds.items() if (rows & ~np.isnan(mean)).any()}
        if (np.isnan(low) & ~np.isnan(mean)).any():
            drawn.add("")  # some points have none
        return np.clip(mean - low, 0, None), np.clip(high - mean, 0, None), drawn

    def runs_note(self) -> str:
        seeds = self.frame["seeds"].to_numpy(int) if "seeds" in self.frame else np.zeros(len(self.frame), int)
        failed = int(self.frame["failed"].sum()) if "failed" in self.frame else 0
        span = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        rows = len(self.frame)
        runs = int(seeds.sum())
        return (
            f"{rows} configuration{'s' * (rows != 1)}, {runs} finished run{'s' * (runs != 1)}"
            f" ({span} seed{'s' * (span != '1')} each){f', {failed} failed' if failed else ''}"
        )


@dataclass
class ReportFigure:
    """A saved figure and what report.md says under it."""

    path: Path
    caption: str  # plain text: what is plotted, over how many runs, which error bars
    labels: list[str]  # the configurations it names (in its legend or on an axis)
    panels: list[int]  # per panel, how many things (points, lines, bars) it draws
    frontier: list[str] = field(default_factory=list)  # Pareto-optimal configurations (latency vs quality)
    frontier_metric: str = ""  # the quality metric the frontier is over


# ---- labels, colours, axes -------------------------------------------------------------------------------


def distinguishing_keys(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The fewest swept settings whose values tell the rows apart (a setting that follows from another, like
    a grid that only one backend searches, is left out); every key when there are too many to search."""
    if len(keys) > MAX_KEYS_SEARCHED or len(frame) < 2:
        return list(keys)
    values = frame[list(keys)].astype(str)
    subsets = (list(s) for size in range(1, len(keys) + 1) for s in itertools.combinations(keys, size))
    return next((s for s in subsets if not values[s].duplicated().any()), list(keys))


def configuration_labels(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Each row named by its overrides that differ from the baseline (`memory=graph`, `diversity=0.3`): a
    setting's baseline is the value most rows share, a row with only baseline values is `baseline`. Keys are
    shortened to their last dotted part where that stays unambiguous, long values cut; `#n` (its row in the
    table) when nothing is swept."""
    if not keys:
        return [f"#{number}" for number in range(1, len(frame) + 1)]
    short = short_keys(keys)
    values = frame[list(keys)].astype(str)
    base = baseline(frame, keys)
    return [
        ", ".join(f"{short[key]}={cut(row[key])}" for key in keys if row[key] != base.get(key)) or "baseline"
        for _, row in values.iterrows()
    ]


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """`memory.fusion` -> `fusion`, unless two keys would then read the same."""
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    return short if len(set(short.values())) == len(short) else {key: key for key in keys}


def baseline(frame: pd.DataFrame, keys: Sequence[str]) -> dict[str, str]:
    """Per setting, the value more rows share than any other (none when no value is shared)."""
    shared = {}
    for key in keys:
        counts = frame[key].astype(str).value_counts()
        if len(counts) and counts.iloc[0] > 1 and (len(counts) == 1 or counts.iloc[0] > counts.iloc[1]):
            shared[key] = str(counts.index[0])
    return shared


def cut(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def colours(count: int) -> list[tuple[float, float, float, float]]:
    """The same colour for the same row in every figure of a report."""
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= MAX_NAMED:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["viridis"](i / (count - 1)) for i in range(count)]


def plain(text: str) -> str:
    """Text from run data drawn literally: a `$` would start matplotlib's mathtext."""
    return text.replace("$", r"\$")


def is_percent(spec: MetricSpec | None) -> bool:
    return spec is not None and spec.unit == "fraction"


def axis_label(metric: str, spec: MetricSpec | None) -> str:
    """`recall_all@10 (%), higher is better` from `retrieval/recall_all@10` and its declaration."""
    name = metric.split("/", 1)[-1].replace("/", " / ").replace("_", " ")
    if spec is None:
        return plain(f"{name} (unit not declared)")
    unit = "%" if is_percent(spec) else spec.unit
    direction = DIRECTION.get(spec.higher_is_better) if spec.higher_is_better is not None else None
    return plain(f"{name} ({unit})" + (f", {direction}" if direction else ""))


def scale(spec: MetricSpec | None) -> float:
    return 100.0 if is_percent(spec) else 1.0


def headline_metric(table: PlotTable) -> str | None:
    """The first metric drawn that is a quality score, else the first with a direction, else the first."""
    drawn = [name for name in table.metrics if not np.isnan(table.mean(name)).all()]
    specs = table.specs
    return next(
        itertools.chain(
            (name for name in drawn if name in specs and specs[name].quality),
            (name for name in drawn if name in specs and specs[name].higher_is_better is not None),
            drawn,
        ),
        None,
    )


def latency_metric(metrics: Sequence[str], specs: Mapping[str, MetricSpec]) -> str | None:
    """The first metric the experiment declares as a time (unit ms or s)."""
    return next((name for name in metrics if name in specs and specs[name].latency), None)


def quality_metrics(metrics: Sequence[str], specs: Mapping[str, MetricSpec]) -> list[str]:
    """The metrics declared as scores to maximise on a fixed scale (recall, nDCG, accuracy...)."""
    return [name for name in metrics if name in specs and specs[name].quality]


def category_metrics(headline: str, metrics: Sequence[str]) -> dict[str, str]:
    """category -> metric, for the per-category variants of the headline (`qa/f1` -> `qa/temporal/f1`)."""
    if "/" not in headline:
        return {}
    prefix, rest = headline.split("/", 1)
    pattern = re.compile(rf"{re.escape(prefix)}/([^/]+)/{re.escape(rest)}")
    found = {match.group(1): name for name in metrics if (match := pattern.fullmatch(name))}
    return {category: name for category, name in found.items() if category not in NOT_CATEGORIES}


def pareto_optimal(x: np.ndarray, y: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rows no other row beats on both axes (x lower is better; y as declared); NaN rows are never optimal."""
    quality = y if higher_is_better else -y
    valid = ~(np.isnan(x) | np.isnan(y))
    optimal = valid.copy()
    for i in np.flatnonzero(valid):
        others = valid & (x <= x[i]) & (quality >= quality[i]) & ((x < x[i]) | (quality > quality[i]))
        optimal[i] = not others.any()
    return optimal


def file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("_")


# ---- drawing ---------------------------------------------------------------------------------------------


def _figure(panels: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    columns = min(COLUMNS, panels)
    width = width * 1.3 if panels == 1 else width  # the legend beside one panel must not squeeze it
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[panels:]:
        figure.delaxes(axis)  # no empty panels
    return figure, list(axes.flat[:panels])


def _legend(figure: Figure, table: PlotTable, rows: Sequence[int], extra: Sequence[Artist] = ()) -> list[str]:
    """One legend for the figure naming the configurations drawn (none beyond MAX_NAMED); their labels."""
    from matplotlib.lines import Line2D

    if len(table.frame) > MAX_NAMED or not rows:
        return []
    palette = colours(len(table.frame))
    handles: list[Artist] = [
        Line2D([], [], marker="o", linestyle="none", color=palette[row], label=plain(table.labels[row])) for row in rows
    ]
    handles += extra
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return [table.labels[row] for row in rows]


def _zero_based(axis: Axes) -> None:
    """Differences drawn to scale: the y axis of a non-negative quantity starts at 0."""
    low, high = axis.get_ylim()
    if low > 0:
        axis.set_ylim(0, high * 1.05)


def _setting_positions(values: Sequence[str]) -> tuple[dict[str, float], bool]:
    """x position of each value of a setting; numeric when every value is a number."""
    distinct = list(dict.fromkeys(values))
    try:
        numbers = [float(value) for value in distinct]
    except ValueError:
        return {value: float(i) for i, value in enumerate(distinct)}, False
    return dict(zip(distinct, numbers, strict=True)), True


def draw_against_setting(axis: Axes, table: PlotTable, metric: str, key: str) -> list[int]:
    """The metric (mean and error bar per configuration) against the values of `key`; numeric values are
    joined by a grey line per combination of the other settings, categories side by side. The rows drawn."""
    spec = table.specs.get(metric)
    factor, palette = scale(spec), colours(len(table.frame))
    mean, (below, above, _) = table.mean(metric), table.errors(metric)
    values = table.frame[key].astype(str).tolist()
    positions, numeric = _setting_positions(values)
    others = [k for k in table.named_keys if k != key]
    groups: dict[tuple[str, ...], list[int]] = {}
    for row in range(len(table.frame)):
        if not np.isnan(mean[row]):
            groups.setdefault(tuple(table.frame.loc[row, others].astype(str)), []).append(row)
    drawn = sorted(row for rows in groups.values() for row in rows)
    for group, rows in enumerate(groups.values()):
        offset = 0.0 if numeric else (group - (len(groups) - 1) / 2) * min(0.6 / max(len(groups), 1), 0.15)
        xs = [positions[values[row]] + offset for row in rows]
        if numeric and len(rows) > 1:
            order = np.argsort(xs)
            axis.plot(np.array(xs)[order], mean[rows][order] * factor, color="0.75", linewidth=1, zorder=1)
        for x, row in zip(xs, rows, strict=True):
            error = [[below[row] * factor], [above[row] * factor]] if not np.isnan(below[row]) else None
            axis.errorbar(x, mean[row] * factor, yerr=error, marker="o", color=palette[row], capsize=3, zorder=2)
    if numeric and min(positions.values()) > 0 and max(positions.values()) / min(positions.values()) >= LOG_SPAN:
        axis.set_xscale("log")
    if numeric:
        axis.set_xticks(list(positions.values()), [plain(cut(value, 12)) for value in positions], fontsize=8)
    else:
        axis.set_xticks(list(positions.values()), [plain(cut(value, 16)) for value in positions], rotation=20,
                        fontsize=8, ha="right")  # fmt: skip
    axis.set_xlabel(plain(key))
    axis.set_ylabel(axis_label(metric, spec), fontsize=8)
    _zero_based(axis)
    axis.grid(axis="y", alpha=0.3)
    return drawn


def draw_by_configuration(axis: Axes, table: PlotTable, metric: str) -> list[int]:
    """The metric per configuration, one row each (named on the y axis, in the table's order). The rows drawn."""
    spec = table.specs.get(metric)
    factor, palette = scale(spec), colours(len(table.frame))
    mean, (below, above, _) = table.mean(metric), table.errors(metric)
    drawn = [row for row in range(len(table.frame)) if not np.isnan(mean[row])]
    for row in drawn:
        error = [[below[row] * factor], [above[row] * factor]] if not np.isnan(below[row]) else None
        axis.errorbar(mean[row] * factor, row, xerr=error, marker="o", color=palette[row], capsize=3)
    axis.set_yticks(drawn, [plain(table.labels[row]) for row in drawn], fontsize=8)
    axis.invert_yaxis()  # the first row on top, as in the table
    axis.set_xlabel(axis_label(metric, spec), fontsize=8)
    low, high = axis.get_xlim()
    if low > 0:
        axis.set_xlim(0, high * 1.05)  # to scale
    axis.grid(axis="x", alpha=0.3)
    return drawn


def draw_tradeoff(axis: Axes, table: PlotTable, latency: str, metric: str) -> tuple[list[int], list[int]]:
    """Quality against latency, one point per configuration with error bars on both axes; the Pareto-optimal
    ones ringed and joined by a dashed step line. (rows drawn, rows on the frontier)"""
    spec, latency_spec = table.specs.get(metric), table.specs.get(latency)
    y_factor, x_factor, palette = scale(spec), scale(latency_spec), colours(len(table.frame))
    x, y = table.mean(latency), table.mean(metric)
    x_below, x_above, _ = table.errors(latency)
    y_below, y_above, _ = table.errors(metric)
    drawn = [row for row in range(len(table.frame)) if not (np.isnan(x[row]) or np.isnan(y[row]))]
    for row in drawn:
        axis.errorbar(
            x[row] * x_factor, y[row] * y_factor, color=palette[row], marker="o", capsize=3, zorder=2,
            xerr=None if np.isnan(x_below[row]) else [[x_below[row] * x_factor], [x_above[row] * x_factor]],
            yerr=None if np.isnan(y_below[row]) else [[y_below[row] * y_factor], [y_above[row] * y_factor]],
        )  # fmt: skip
    optimal = pareto_optimal(x, y, spec is None or spec.higher_is_better is not False)
    frontier = sorted(np.flatnonzero(optimal).tolist(), key=lambda row: x[row])
    if frontier:
        axis.scatter(x[frontier] * x_factor, y[frontier] * y_factor, s=160, facecolors="none", edgecolors="black",
                     linewidths=1.2, zorder=3)  # fmt: skip
        axis.step(x[frontier] * x_factor, y[frontier] * y_factor, where="post", color="black", linestyle="--",
                  linewidth=0.8, zorder=1)  # fmt: skip
    axis.margins(0.08)  # room for the rings
    axis.set_xlabel(axis_label(latency, latency_spec), fontsize=8)
    axis.set_ylabel(axis_label(metric, spec), fontsize=8)
    axis.grid(alpha=0.3)
    return drawn, frontier


def draw_categories(axis: Axes, table: PlotTable, headline: str, categories: Mapping[str, str]) -> list[int]:
    """Grouped bars: one group per category, one bar per configuration. The rows drawn."""
    palette = colours(len(table.frame))
    rows = [
        row for row in range(len(table.frame)) if any(not np.isnan(table.mean(m)[row]) for m in categories.values())
    ]
    width = 0.8 / max(len(rows), 1)
    spec = table.specs.get(next(iter(categories.values())))
    factor = scale(spec)
    for slot, row in enumerate(rows):
        heights, lows, highs = [], [], []
        for metric in categories.values():
            below, above, _ = table.errors(metric)
            heights.append(table.mean(metric)[row] * factor)
            lows.append(0.0 if np.isnan(below[row]) else below[row] * factor)
            highs.append(0.0 if np.isnan(above[row]) else above[row] * factor)
        positions = np.arange(len(categories)) + (slot - (len(rows) - 1) / 2) * width
        errors = [lows, highs] if any(lows) or any(highs) else None
        axis.bar(positions, heights, width, color=palette[row], yerr=errors, capsize=2, error_kw={"elinewidth": 0.8})
    axis.set_xticks(range(len(categories)), [plain(name) for name in categories], fontsize=8)
    axis.set_ylabel(axis_label(headline, spec), fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return rows


def _save(figure: Figure, path: Path, caption: str, labels: Sequence[str]) -> None:
    """Atomically, as PNG; the configurations it names and its caption go into its metadata (tEXt)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    metadata = {"Title": path.stem, "Description": caption, "Configurations": json.dumps(list(labels))}
    figure.savefig(buffer, format="png", dpi=110, metadata=metadata)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


# ---- the figures of a report -----------------------------------------------------------------------------


def _errors_note(table: PlotTable, metrics: Sequence[str]) -> str:
    kinds = set().union(*(table.errors(metric)[2] for metric in metrics)) if metrics else set()
    named = sorted(kind for kind in kinds if kind)
    if not named:
        return "No error bars: each configuration has one seed and the table records no confidence interval."
    note = "Error bars: " + "; elsewhere ".join(named) + "."
    return note + (" Points without one have a single seed and no recorded CI." if "" in kinds else "")


def draw_figures(table: PlotTable, out: Path, latency: str | None, all_plots: bool) -> list[ReportFigure]:
    """The report's figures under `out`: the headline metric against each swept setting, per category, and
    against `latency` (with its Pareto frontier); with `all_plots`, also every metric against every setting
    and every quality metric against latency."""
    headline = headline_metric(table)
    if headline is None:
        return []
    scope = table.runs_note()
    short = short_keys(table.named_keys)
    base = {short[key]: value for key, value in baseline(table.frame, table.named_keys).items()}
    figures = []

    def finish(
        figure: Figure,
        name: str,
        what: str,
        metrics: Sequence[str],
        rows: Sequence[int],
        extra: Sequence[Artist] = (),
        legend: bool = True,  # False: the configurations are named on an axis
    ) -> ReportFigure:
        labels = _legend(figure, table, rows, extra) if legend else [table.labels[row] for row in rows]
        panels = [len(a.lines) + len(a.collections) + len(a.patches) + len(a.containers) for a in figure.axes]
        named = f"baseline: {', '.join(f'{k}={v}' for k, v in base.items())}." if "baseline" in labels else ""
        caption = " ".join(filter(None, [what, named, f"{scope}.", _errors_note(table, metrics)]))
        _save(figure, out / name, caption, labels)
        return ReportFigure(out / name, caption, labels, panels)

    if len(table.named_keys) > MAX_SETTING_PANELS:
        longest = max(map(len, table.labels))
        figure, axes = _figure(1, width=3.5 + 0.05 * longest, height=1.2 + 0.3 * len(table.frame))
        rows = draw_by_configuration(axes[0], table, headline)
        what = f"{headline} per configuration (the overrides that differ from the most common values)."
        figures.append(finish(figure, "headline.png", what, [headline], rows, legend=False))
    elif table.named_keys:
        figure, axes = _figure(len(table.named_keys))
        rows = sorted({row for axis, key in zip(axes, table.named_keys, strict=True)
                       for row in draw_against_setting(axis, table, headline, key)})  # fmt: skip
        what = f"{headline} against {', '.join(table.named_keys)}."
        figures.append(finish(figure, "headline.png", what, [headline], rows))
    categories = category_metrics(headline, table.metrics)
    categories = {c: m for c, m in categories.items() if not np.isnan(table.mean(m)).all()}
    if categories:
        figure, axes = _figure(1, width=max(4.6, 1.2 + 0.5 * len(categories) * max(len(table.frame), 2) / 2))
        rows = draw_categories(axes[0], table, headline, categories)
        what = f"{headline} per category ({', '.join(categories)})."
        figures.append(finish(figure, "categories.png", what, list(categories.values()), rows))
    qualities = quality_metrics(table.metrics, table.specs) if all_plots else [headline]
    qualities = [name for name in qualities if name != latency]
    if latency and not np.isnan(table.mean(latency)).all() and qualities:
        from matplotlib.lines import Line2D

        figure, axes = _figure(len(qualities))
        drawn: set[int] = set()
        frontier: list[int] = []
        for axis, metric in zip(axes, qualities, strict=True):
            points, optimal = draw_tradeoff(axis, table, latency, metric)
            drawn.update(points)
            frontier = optimal if metric == headline else frontier
        ring = Line2D([], [], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="black",
                      linestyle="--", color="black", linewidth=0.8, label="Pareto-optimal")  # fmt: skip
        what = (
            f"{', '.join(qualities)} against {latency}; ringed: the Pareto-optimal configurations"
            " (no other is both faster and better)."
        )
        result = finish(figure, "latency_vs_quality.png", what, [latency, *qualities], sorted(drawn), [ring])
        result.frontier = [table.labels[row] or f"#{row + 1}" for row in frontier]
        result.frontier_metric = headline
        figures.append(result)
    if all_plots:
        for key in table.keys:
            metrics = [name for name in table.metrics if not np.isnan(table.mean(name)).all()]
            figure, axes = _figure(len(metrics))
            rows_drawn = sorted({row for axis, metric in zip(axes, metrics, strict=True)
                                 for row in draw_against_setting(axis, table, metric, key)})  # fmt: skip
            figures.append(finish(figure, f"{file_stem(key)}.png", f"Every metric against {key}.", metrics, rows_drawn))
    return figures


def figure_section(figures: Sequence[ReportFigure], out: Path, command: str, note: str = "") -> list[str]:
    """report.md's figures, each with its caption and the command that drew it; the frontier listed."""
    if not figures:
        return []
    lines = ["## Figures", "", *([note, ""] if note else [])]
    for number, figure in enumerate(figures, 1):
        lines += [f"![{figure.path.stem}]({figure.path.relative_to(out)})", ""]
        lines += [f"*Figure {number}.* {md_text(figure.caption)} Drawn by {md_code(command)}.", ""]
        if figure.frontier:
            names = ", ".join(md_text(name) for name in figure.frontier)
            lines += [f"Pareto-optimal in {md_text(figure.frontier_metric)} against latency: {names}.", ""]
    return lines
