"""The report's figures: configurations named in legends, axes from the metric declarations, error bars and
their caption, the latency-quality frontier, no empty panels, and re-plotting from a committed table.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memos_lab.cli import main
from memos_lab.errors import DataError
from memos_lab.experiments.common import MetricSpec
from memos_lab.reporting import replot_table, write_report
from memos_lab.reporting.plots import (
    PlotTable,
    axis_label,
    configuration_labels,
    draw_against_setting,
    draw_tradeoff,
    pareto_optimal,
)
from tests.reporting.test_report import make_run, sweep

RECALL = MetricSpec(name="retrieval/*recall_*", unit="fraction", higher_is_better=True)
SEARCH = MetricSpec(name="retrieval/search_ms_*", unit="ms", higher_is_better=False)


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)  # type: ignore[attr-defined]


def test_a_two_config_sweep_names_both_configurations_in_every_legend_with_the_same_colours(tmp_path):
    folder = sweep(tmp_path / "sweep", {("rrf", 0): 0.5, ("rrf", 1): 0.7, ("bm25", 0): 0.2, ("bm25", 1): 0.4})
    out = tmp_path / "report"
    write_report([folder], out, command="python -m memos_lab report sweep --out report")
    report = (out / "report.md").read_text()
    for name in ("headline.png", "latency_vs_quality.png"):
        metadata = png_text(out / name)
        assert json.loads(metadata["Configurations"]) == ["fusion=rrf", "fusion=bm25"]  # table order: same colours
        assert f"]({name})" in report
    # Each figure has a caption: what, over how many runs and seeds, the error bars, the command.
    caption = next(line for line in report.splitlines() if line.startswith("*Figure 1.*"))
    assert "recall" in caption and "2 configurations, 4 finished runs (2 seeds each)" in caption
    assert "± 1 sample std over seeds" in caption and "python -m memos_lab report sweep --out report" in caption
    # The latency-quality figure's frontier is listed: rrf is better, bm25 is faster (seed 0 and 1 alike).
    assert "Pareto-optimal in retrieval/recall_all@10 against latency: fusion=rrf." in report


def test_axes_show_the_declared_unit_and_direction_with_rates_as_percentages():
    assert axis_label("retrieval/recall_all@10", RECALL) == "recall all@10 (%), higher is better"
    assert axis_label("retrieval/search_ms_p50", SEARCH) == "search ms p50 (ms), lower is better"
    assert axis_label("retrieval/index_mb", MetricSpec(name="x", unit="MiB")) == "index mb (MiB)"
    assert "not declared" in axis_label("m/x", None)

    import matplotlib.pyplot as plt

    frame = pd.DataFrame({"memory": ["a", "b"], "seeds": [1, 1], "failed": [0, 0],
                          "retrieval/recall_all@10 mean": [0.25, 0.5], "retrieval/search_ms_p50 mean": [3.0, 9.0]})  # fmt: skip
    specs = {"retrieval/recall_all@10": RECALL, "retrieval/search_ms_p50": SEARCH}
    table = PlotTable(frame, ["memory"], list(specs), specs)
    figure, axis = plt.subplots()
    draw_against_setting(axis, table, "retrieval/recall_all@10", "memory")
    assert axis.get_ylabel() == "recall all@10 (%), higher is better"
    assert sorted(line.get_ydata()[0] for line in axis.lines) == [25.0, 50.0]  # fractions drawn as percent
    assert axis.get_ylim()[0] == 0  # drawn to scale
    axis.clear()
    drawn, frontier = draw_tradeoff(axis, table, "retrieval/search_ms_p50", "retrieval/recall_all@10")
    assert axis.get_xlabel() == "search ms p50 (ms), lower is better" and drawn == [0, 1] and frontier == [0, 1]
    plt.close(figure)


def test_pareto_optimal_keeps_the_configurations_nothing_beats_on_both_axes():
    latency = np.array([1.0, 2.0, 3.0, 2.5, np.nan])
    quality = np.array([0.5, 0.7, 0.6, 0.7, 0.9])
    assert pareto_optimal(latency, quality, higher_is_better=True).tolist() == [True, True, False, False, False]
    assert pareto_optimal(latency, quality, higher_is_better=False).tolist() == [True, False, False, False, False]


def test_labels_name_the_overrides_that_differ_from_the_baseline():
    frame = pd.DataFrame({"memory.diversity": ["0", "0.3", "0", "0"], "memory.session_quota": ["0", "0", "3", "0"],
                          "experiment.grid": ["[]", "[]", "[]", "[a]"]})  # fmt: skip
    keys = list(frame.columns)
    assert configuration_labels(frame, keys) == ["baseline", "diversity=0.3", "session_quota=3", "grid=[a]"]
    assert configuration_labels(frame.iloc[:0], []) == []
    both = pd.DataFrame({"memory.fusion": ["rrf", "bm25"], "reader.fusion": ["x", "y"]})
    assert configuration_labels(both, list(both.columns)) == [  # shortened only where that stays unambiguous
        "memory.fusion=rrf, reader.fusion=x",
        "memory.fusion=bm25, reader.fusion=y",
    ]


def test_a_single_run_report_draws_no_empty_panels_and_says_there_are_no_error_bars(tmp_path):
    make_run(tmp_path / "run", ["seed=0"], {"retrieval/recall_all@10": 0.5, "retrieval/search_ms_p50": 2.0,
                                            "retrieval/temporal/recall_all@10": 0.4, "run/wall_s": 1.0})  # fmt: skip
    chosen = ["retrieval/recall_all@10", "retrieval/temporal/recall_all@10", "retrieval/search_ms_p50"]
    summary = write_report([tmp_path / "run"], tmp_path / "out", "cmd", metrics=chosen)
    assert summary.configurations == 1
    names = sorted(path.name for path in (tmp_path / "out").glob("*.png"))
    assert names == ["categories.png", "latency_vs_quality.png"]  # nothing is swept: no headline-vs-setting
    for name in names:
        assert json.loads(png_text(tmp_path / "out" / name)["Configurations"]) == ["#1"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("No error bars: each configuration has one seed") == 2


def test_the_figures_know_how_many_panels_they_draw_and_none_is_empty(tmp_path):
    from memos_lab.reporting.plots import draw_figures

    frame = pd.DataFrame({"memory": ["a"], "seeds": [1], "failed": [0], "retrieval/recall_all@10 mean": [0.5],
                          "retrieval/search_ms_p50 mean": [2.0], "retrieval/mrr mean": [np.nan]})  # fmt: skip
    specs = {"retrieval/recall_all@10": RECALL, "retrieval/search_ms_p50": SEARCH}
    table = PlotTable(frame, [], ["retrieval/recall_all@10", "retrieval/mrr", "retrieval/search_ms_p50"], specs)
    figures = draw_figures(table, tmp_path, "retrieval/search_ms_p50", all_plots=True)
    assert figures and all(figure.panels and min(figure.panels) > 0 for figure in figures)


def test_error_bars_come_from_recorded_cis_before_the_std_over_seeds():
    frame = pd.DataFrame({"seeds": [1, 3, 1], "qa/f1 mean": [0.5, 0.4, 0.3], "qa/f1 std": [np.nan, 0.1, np.nan],
                          "qa/f1 ci95 low": [0.4, np.nan, np.nan], "qa/f1 ci95 high": [0.7, np.nan, np.nan]})  # fmt: skip
    below, above, kinds = PlotTable(frame, [], ["qa/f1"], {}).errors("qa/f1")
    assert below[:2] == pytest.approx([0.1, 0.1]) and above[:2] == pytest.approx([0.2, 0.1])
    assert np.isnan(below[2]) and "" in kinds  # the third has one seed and no CI: no bar, and the caption says so
    assert any("bootstrap" in kind for kind in kinds) and any("std" in kind for kind in kinds)
    # A run's own CI (qa/f1_ci95_low) counts for a configuration of one seed.
    run_ci = pd.DataFrame(
        {"seeds": [1], "qa/f1 mean": [0.5], "qa/f1_ci95_low mean": [0.45], "qa/f1_ci95_high mean": [0.6]}
    )
    below, above, kinds = PlotTable(run_ci, [], ["qa/f1"], {}).errors("qa/f1")
    assert (below[0], above[0]) == pytest.approx((0.05, 0.1)) and kinds == {"the run's own 95% CI (one seed)"}


def test_labels_from_run_data_are_drawn_and_written_literally(tmp_path):
    folder = sweep(tmp_path / "sweep", {("$x$", 0): 0.5, ("a|*b*", 0): 0.7})
    out = tmp_path / "out"
    write_report([folder], out, "cmd")
    assert json.loads(png_text(out / "headline.png")["Configurations"]) == ["fusion=$x$", "fusion=a|*b*"]
    report = (out / "report.md").read_text()
    assert "fusion=a\\|\\*b\\*" in report  # escaped Markdown in the frontier line
    # A value table.csv quotes (it starts like a formula) reads back as it was.
    folder = sweep(tmp_path / "formula", {("@x", 0): 0.5, ("-x", 0): 0.7})
    write_report([folder], tmp_path / "formula_out", "cmd")
    assert "'@x" in (tmp_path / "formula_out" / "table.csv").read_text()
    figures = replot_table(tmp_path / "formula_out" / "table.csv", tmp_path / "again", "cmd", experiment="retrieval")
    assert figures[0].labels == ["fusion=@x", "fusion=-x"]


def test_report_replots_from_a_committed_table_keeping_the_rest_of_report_md(tmp_path, capsys):
    folder = sweep(tmp_path / "sweep", {("rrf", 0): 0.5, ("rrf", 1): 0.7, ("bm25", 0): 0.2, ("bm25", 1): 0.4})
    out = tmp_path / "report"
    write_report([folder], out, command="first")
    before = (out / "report.md").read_text()
    for png in out.glob("*.png"):
        png.unlink()
    main(["report", "--from-table", str(out / "table.csv"), "--out", str(out), "--experiment", "retrieval"])
    assert "wrote 2 figure(s)" in capsys.readouterr().out
    after = (out / "report.md").read_text()
    assert after.split("## Figures")[0] == before.split("## Figures")[0]  # table, tests, provenance kept
    assert after.split("## Provenance")[1] == before.split("## Provenance")[1]
    assert "Re-plotted from `table.csv`" in after and after.count("## Figures") == 1
    for name in ("headline.png", "latency_vs_quality.png"):
        assert json.loads(png_text(out / name)["Configurations"]) == ["fusion=rrf", "fusion=bm25"]
    # The heading of the report beside the table names the experiment when --experiment is not given.
    figures = replot_table(out / "table.csv", tmp_path / "again", "cmd")
    assert [figure.path.name for figure in figures] == ["headline.png", "latency_vs_quality.png"]


def test_replotting_leaves_out_metrics_defined_differently_since_the_table(tmp_path):
    table = tmp_path / "table.csv"
    pd.DataFrame({"#": [1, 2], "memory": ["a", "b"], "seeds": [1, 1], "failed": [0, 0],
                  "retrieval/index_mb mean": [1.0, 2.0], "retrieval/index_mb std": [np.nan, np.nan],
                  "retrieval/recall_all@10 mean": [0.5, 0.6]}).to_csv(table, index=False)  # fmt: skip
    replot_table(table, tmp_path, "cmd", experiment="retrieval")  # index_mb is at version 2, none recorded here
    report = (tmp_path / "report.md").read_text()
    assert "Not drawn (defined differently when the table was made): retrieval/index_mb." in report
    assert json.loads(png_text(tmp_path / "headline.png")["Configurations"]) == ["memory=a", "memory=b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "o"], "give run folders or --from-table"),
        (["x", "--from-table", "t.csv", "--out", "o"], "give run folders or --from-table"),
        (["--from-table", "missing.csv", "--out", "o", "--experiment", "retrieval"], "not a readable table"),
        (["--from-table", "t.csv", "--out", "o", "--experiment", "nope"], "no experiment 'nope'"),
    ],
)
def test_from_table_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("#,seeds\n1,1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_table_without_seeds_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no 'seeds' column"):
        PlotTable.from_csv(tmp_path / "t.csv", [])


def test_replotting_an_older_table_takes_the_cis_report_md_lists(tmp_path):
    pd.DataFrame({"#": [1, 2], "memory": ["a", "b"], "seeds": [1, 1], "failed": [0, 0],
                  "qa/f1 mean": [0.2, 0.4], "qa/f1 std": [np.nan, np.nan]}).to_csv(tmp_path / "table.csv", index=False)  # fmt: skip
    (tmp_path / "report.md").write_text(
        "# memos_lab report: qa\n\n## Bootstrap 95% confidence intervals\n\n| #   | metric   | questions   | mean    | 95% CI |\n"
        "|-----|----|----|----|----|\n| #1  | qa/f1    | 19          | 0.2 | [0.1, 0.35]        |\n"
        "| #2  | qa/f1    | 19          | 0.4 | [oops, 0.5]        |\n"
    )
    figures = replot_table(tmp_path / "table.csv", tmp_path, "cmd")
    assert "bootstrap 95% CI" in figures[0].caption and "Points without one" in figures[0].caption  # #2 unreadable
