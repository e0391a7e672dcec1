"""`python -m memos_lab report`: many run folders -> one comparison table, plots, tests and provenance."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from memos_lab.artifact import atomic_write_text
from memos_lab.errors import ConfigError
from memos_lab.eval.stats import bootstrap_ci
from memos_lab.experiments.common import MetricSpec, find_spec
from memos_lab.reporting.escape import csv_safe, md_code, md_frame, md_text
from memos_lab.reporting.plots import (
    CI_HIGH,
    CI_LOW,
    RUN_CI,
    PlotTable,
    ReportFigure,
    draw_figures,
    figure_section,
    latency_metric,
)
from memos_lab.reporting.runs import RunRecord, check_pinned, collect_runs, experiment_of
from memos_lab.reporting.table import (
    Comparison,
    Configuration,
    choose_metrics,
    group_configurations,
    paired_tests,
    summary_frames,
    swept_keys,
)
from memos_lab.runner import COMPLETE_MARKER as WALL_TIME
from memos_lab.runner import RUN_METRICS
from memos_lab.settings import CONF_DIR, register_schemas

REPORT_FILE = "report.md"
TABLE_FILE = "table.csv"
RUNS_FILE = "runs.csv"
ALPHA = 0.05


@dataclass
class ReportSummary:
    out: Path
    runs: int
    failed: int
    configurations: int


def write_report(
    folders: Sequence[Path],
    out: Path,
    command: str,
    metrics: Sequence[str] | None = None,
    note: str | None = None,
    mix_pinned: bool = False,
    all_plots: bool = False,
) -> ReportSummary:
    """Aggregate the runs under `folders` into out/report.md, table.csv, runs.csv and PNG figures.

    Runs that differ in a setting their experiment pins (prompt version, judge model...) are refused
    unless `mix_pinned`. `all_plots` adds every metric against every swept setting to the figures."""
    runs = collect_runs(list(folders))  # raises before anything is written when there is nothing sound to report
    pinned = check_pinned(runs, mix_pinned)
    chosen = choose_metrics(runs, metrics)
    keys, common = swept_keys(runs)
    configurations = group_configurations(runs, keys)
    specs = declared_metrics(runs, [*chosen, WALL_TIME])
    latency = latency_metric(chosen, specs) or WALL_TIME  # a run's wall time when no latency metric was chosen
    # table.csv also keeps the wall time it plots, and each metric's own CI bounds where runs report them.
    companions = [f"{name}{end}" for name in chosen for end in RUN_CI]
    measured = {name for run in runs for name in run.metrics or {}}
    extra = [name for name in [*companions, latency] if name in measured and name not in chosen]
    shown, _ = summary_frames(configurations, chosen)
    _, numeric = summary_frames(configurations, [*chosen, *extra])
    comparisons = paired_tests(configurations, chosen)
    intervals = confidence_intervals(configurations, ci_metrics(runs))
    for interval in intervals:  # the pooled bootstrap CI, for the figures' error bars and any later re-plot
        row = int(interval.configuration.lstrip("#")) - 1
        numeric.loc[row, [f"{interval.metric} {CI_LOW}", f"{interval.metric} {CI_HIGH}"]] = interval.low, interval.high
    out.mkdir(parents=True, exist_ok=True)
    try:
        figures = draw_figures(PlotTable(numeric, keys, chosen, specs), out, latency, all_plots)
        drawn = figure_section(figures, out, command)
    except (ValueError, OverflowError) as error:  # values no axis can hold (1e308): the table still shows them
        drawn = ["## Figures", "", md_text(f"Not drawn: the values do not fit a plot axis ({error})."), ""]
    atomic_write_text(out / TABLE_FILE, csv_safe(numeric).to_csv(index=False))
    atomic_write_text(out / RUNS_FILE, csv_safe(runs_frame(runs)).to_csv(index=False))
    markdown = render(
        runs,
        folders,
        command,
        note,
        common,
        shown,
        comparisons,
        drawn,
        pinned,
        intervals,
        specs,
    )
    atomic_write_text(out / REPORT_FILE, markdown)
    failed = sum(not run.ok for run in runs)
    return ReportSummary(out, len(runs), failed, len(configurations))


def declared_metrics(runs: Sequence[RunRecord], names: Sequence[str]) -> dict[str, MetricSpec]:
    """What each metric is, as the runs' experiment configs declare it (`experiment.metrics`); a metric
    declared with different versions in different runs is refused: its numbers mean different things."""
    found: dict[str, MetricSpec] = {}
    for run in runs:
        specs = [*run.declared, *RUN_METRICS]  # checked when the run was read
        for name in names:
            spec = find_spec(specs, name)
            if spec is None:
                continue
            if name in found and found[name].version != spec.version:
                raise ConfigError(
                    f"metric {name!r} has version {found[name].version} in some runs and {spec.version} in {run.path}: "
                    "its definition changed between them; report them separately"
                )
            found[name] = spec
    return found


def runs_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """Every aggregated run with its provenance: the machine-readable record behind the table."""
    rows = []
    for run in runs:
        provenance = run.provenance
        rows.append(
            {
                "path": str(run.path),
                "seed": run.seed,
                "overrides": " ".join(f"{key}={value}" for key, value in run.overrides.items()),
                "status": "ok" if run.ok else "failed",
                "failure": run.failure or "",
                "wall_s": (run.metrics or {}).get("run/wall_s"),
                "git_commit": provenance.get("git_commit", "unknown"),
                "command": provenance.get("command", "unknown"),
                "hardware": json.dumps(provenance.get("hardware", {}), sort_keys=True),
                "packages": json.dumps(provenance.get("packages", {}), sort_keys=True),
            }
        )
    return pd.DataFrame(rows)


def render(
    runs: Sequence[RunRecord],
    folders: Sequence[Path],
    command: str,
    note: str | None,
    common: dict[str, str],
    table: pd.DataFrame,
    comparisons: Sequence[Comparison],
    figures: Sequence[str],
    pinned: dict[str, str] | None = None,
    intervals: Sequence[Interval] = (),
    specs: dict[str, MetricSpec] | None = None,
) -> str:
    failed = [run for run in runs if not run.ok]
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# memos_lab report: {md_text(experiment_of(runs))}",
        "",
        f"- command: {md_code(command)}",
        *([f"- note: {note}"] if note else []),  # the author's own Markdown
        f"- date: {date}",
        f"- folders: {', '.join(md_code(folder) for folder in folders)}",
        f"- runs: {len(runs)} ({len(runs) - len(failed)} finished, {len(failed)} failed)",
        f"- settings common to all runs: {', '.join(md_text(f'{k}={v}') for k, v in common.items()) or 'none'}",
        *([f"- pinned settings: {', '.join(md_text(f'{k}={v}') for k, v in pinned.items())}"] if pinned else []),
        "",
        "## Results",
        "",
        "One row per configuration; cells are mean ± sample std over the finished seeds (`seeds`);"
        " `failed` counts the runs of that configuration without complete metrics.",
        "",
        tabulate(md_frame(table), headers="keys", tablefmt="github", showindex=False, disable_numparse=True),
        "",
        *_units_section(specs or {}),
    ]
    if failed:
        lines += ["## Failed runs", "", tabulate(
            [(md_code(run.path, in_table=True), run.seed,
              md_code(" ".join(f"{k}={v}" for k, v in run.overrides.items()), in_table=True),
              md_text(run.failure)) for run in failed],
            ["run", "seed", "overrides", "why"], "github", disable_numparse=True,
        ), ""]  # fmt: skip
    lines += _interval_section(intervals)
    lines += _significance_section(comparisons)
    lines += figures
    lines += _provenance_section(runs)
    return "\n".join(lines)


def _units_section(specs: dict[str, MetricSpec]) -> list[str]:
    """The units and directions the experiment declares for the metrics shown (rates are fractions in [0, 1])."""
    if not specs:
        return []
    arrow = {True: "higher is better", False: "lower is better", None: "-"}
    rows = [(md_text(name), spec.unit, arrow[spec.higher_is_better], spec.version) for name, spec in specs.items()]
    return [
        "Units, as the experiment declares them:",
        "",
        tabulate(rows, ["metric", "unit", "direction", "version"], "github"),
        "",
    ]


@dataclass
class Interval:
    """A bootstrap 95% CI of one metric's mean over the per-query scores of one configuration (all its seeds)."""

    configuration: str
    metric: str
    n: int
    mean: float
    low: float
    high: float


def ci_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The metrics an experiment asks CIs for (`experiment.ci_metrics`)."""
    for run in runs:
        names = (run.config.get("experiment") or {}).get("ci_metrics")
        if names:
            return [str(name) for name in names]
    return []


def confidence_intervals(configurations: Sequence[Configuration], metrics: Sequence[str]) -> list[Interval]:
    intervals = []
    for number, configuration in enumerate(configurations, 1):
        for metric in metrics:
            values = [v for run in configuration.finished for v in run.per_query().get(metric, {}).values()]
            if values:
                low, high = bootstrap_ci(values)
                intervals.append(Interval(f"#{number}", metric, len(values), float(np.mean(values)), low, high))
    return intervals


def _interval_section(intervals: Sequence[Interval]) -> list[str]:
    if not intervals:
        return []
    rows = [
        (i.configuration, md_text(i.metric), i.n, f"{i.mean:.4g}", f"[{i.low:.4g}, {i.high:.4g}]") for i in intervals
    ]
    return [
        "## Bootstrap 95% confidence intervals",
        "",
        "Percentile bootstrap (2000 resamples, seeded) of the mean over the per-question scores of each"
        " configuration (`#` as in the table; the seeds' questions pooled).",
        "",
        tabulate(rows, ["#", "metric", "questions", "mean", "95% CI"], "github", disable_numparse=True),
        "",
    ]


def _significance_section(comparisons: Sequence[Comparison]) -> list[str]:
    if not comparisons:
        return []
    threshold = ALPHA / len(comparisons)
    rows = [
        (md_text(c.metric), c.control, c.treatment, c.pairs, f"{c.control_mean:.4g}", f"{c.treatment_mean:.4g}",
         f"{c.p_value:.3g}", "yes" if c.p_value <= threshold else "no")
        for c in comparisons
    ]  # fmt: skip
    return [
        "## Paired significance tests",
        "",
        f"Two-sided paired t-test (ranx) on per-query scores, pairing each query under the same seed; "
        f"significant at α = {ALPHA} with Bonferroni correction over {len(comparisons)} tests (p ≤ {threshold:.2g}).",
        "",
        tabulate(
            rows, ["metric", "A", "B", "pairs", "mean A", "mean B", "p", "significant"], "github", disable_numparse=True
        ),
        "",
    ]


def _provenance_section(runs: Sequence[RunRecord]) -> list[str]:
    """What every run ran on; identical values are listed once with their run count (runs.csv has each run)."""

    def counted(values: list[str], in_table: bool = False) -> str:
        return "; ".join(f"{md_code(value, in_table)} ({count})" for value, count in Counter(values).most_common())

    lines = ["## Provenance", "", f"Per run: `{RUNS_FILE}`. Values below with the number of runs that had them.", ""]
    lines.append(f"- git commit: {counted([run.provenance.get('git_commit', 'unknown') for run in runs])}")
    lines.append(f"- command: {counted([run.provenance.get('command', 'unknown') for run in runs])}")
    for section in ("memory", "hardware", "packages"):
        keys = sorted({key for run in runs for key in run.provenance.get(section, {})})
        values = [
            (md_text(key), counted([str(run.provenance.get(section, {}).get(key, "unknown")) for run in runs], True))
            for key in keys
        ]
        if values:
            lines += ["", tabulate(values, [section, "value (runs)"], "github", disable_numparse=True)]
        else:
            lines.append(f"- {section}: unknown (no {section} recorded)")
    return [*lines, ""]


# ---- re-plotting a committed table -------------------------------------------------------------------------

HEADING = re.compile(r"# memos_lab report: (\S+)")
UNITS_ROW = re.compile(r"\|\s*(\S+)\s*\|\s*\S+\s*\|[^|]*\|\s*(\d+)\s*\|")  # metric | unit | direction | version
SECTIONS = ("## Plots", "## Figures")
INTERVAL_ROW = re.compile(r"\|\s*#(\d+)\s*\|\s*(\S+)\s*\|\s*\d+\s*\|[^|]*\|\s*\[([^,\]]+),\s*([^\]]+)\]\s*\|")


def replot_table(
    table_path: Path,
    out: Path,
    command: str,
    experiment: str | None = None,
    metrics: Sequence[str] | None = None,
    all_plots: bool = False,
) -> list[ReportFigure]:
    """Draw a report's figures again from its table.csv, without its run folders; the figure section of
    out/report.md is replaced (the rest of it kept), or out/report.md made holding only the figures.

    Units and directions come from the experiment's current declarations (`--experiment`, else the heading
    of the report.md beside the table). A metric whose definition changed since the table was made (its
    version recorded beside the table differs, or no version is recorded and it is past version 1) is not
    drawn: its numbers would be labelled with the wrong unit."""
    beside = _read_text(table_path.parent / REPORT_FILE)
    name = experiment or next((m.group(1) for m in map(HEADING.fullmatch, beside.splitlines()[:1]) if m), None)
    if name is None:
        raise ConfigError(f"--from-table: which experiment made {table_path}? pass --experiment NAME")
    table = PlotTable.from_csv(table_path, experiment_specs(name.replace("\\", "")), metrics)
    recorded = {
        m.group(1).replace("\\", ""): int(m.group(2)) for m in map(UNITS_ROW.fullmatch, beside.splitlines()) if m
    }
    _recorded_intervals(table, beside)
    stale = [m for m in table.metrics if m in table.specs and recorded.get(m, 1) != table.specs[m].version]
    table.metrics = [m for m in table.metrics if m not in stale]
    latency = latency_metric(table.metrics, table.specs) or WALL_TIME
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(table, out, latency, all_plots)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    note = f"Re-plotted from `{table_path.name}` on {date}, without the run folders."
    if stale:
        note += f" Not drawn (defined differently when the table was made): {', '.join(map(md_text, stale))}."
    section = figure_section(figures, out, command, note)
    report = _read_text(out / REPORT_FILE)
    lines = report.splitlines() if report else [f"# memos_lab figures: {md_text(name)}", ""]
    start = next((i for i, line in enumerate(lines) if line in SECTIONS), None)
    if start is None:
        start = end = next((i for i, line in enumerate(lines) if line == "## Provenance"), len(lines))
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    atomic_write_text(out / REPORT_FILE, "\n".join([*lines[:start], *section, *lines[end:]]) + "\n")
    return figures


def _recorded_intervals(table: PlotTable, report: str) -> None:
    """Tables made before they held the CI bounds: the bootstrap CIs report.md lists (`| #n | metric | questions
    | mean | [low, high] |`) become the table's `M ci95 low|high` for the figures' error bars."""
    if "#" not in table.frame or any(column.endswith(CI_LOW) for column in table.frame):
        return
    rows = {str(number).strip(): index for index, number in enumerate(table.frame["#"])}
    for match in map(INTERVAL_ROW.fullmatch, report.splitlines()):
        if match and match.group(1) in rows:
            metric = match.group(2).replace("\\", "")
            try:
                bounds = float(match.group(3)), float(match.group(4))
            except ValueError:
                continue
            table.frame.loc[rows[match.group(1)], [f"{metric} {CI_LOW}", f"{metric} {CI_HIGH}"]] = bounds


def experiment_specs(name: str) -> list[MetricSpec]:
    """What an experiment's config (as shipped now) declares about its metrics, plus the runner's own."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    choices = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
    if name not in choices:
        raise ConfigError(f"--experiment: no experiment {name!r}; valid: {', '.join(choices)}")
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"])
    declared = OmegaConf.to_container(cfg.experiment, resolve=False).get("metrics") or []  # type: ignore[union-attr]
    return [*(MetricSpec.from_mapping(item) for item in declared), *RUN_METRICS]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
