"""The report on hand-made run folders: aggregation, failed jobs, significance tests, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from memos_lab.cli import main
from memos_lab.errors import ConfigError, DataError
from memos_lab.reporting import write_report
from memos_lab.reporting.escape import csv_cell, md_code, md_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What conf/experiment/retrieval.yaml declares for the metrics these hand-made runs hold.
DECLARED = [
    {"name": "retrieval/*recall_*", "unit": "fraction", "higher_is_better": True, "version": 1},
    {"name": "retrieval/*mrr", "unit": "fraction", "higher_is_better": True, "version": 1},
    {"name": "retrieval/search_ms_*", "unit": "ms", "higher_is_better": False, "version": 1},
]
PROVENANCE = {
    "git_commit": "abc123",
    "command": "python -m memos_lab run -m memory.fusion=rrf,bm25 seed=0,1",
    "hardware": {"cpu": "Test CPU", "cpu_count": "2"},
    "packages": {"torch": "2.13.0", "ranx": "0.3.21"},
}


def make_run(
    path: Path,
    overrides: list[str],
    metrics: dict[str, float] | None,
    experiment: str = "retrieval",
    per_query: dict[str, dict[str, float]] | None = None,
    fusion: str = "rrf",
    declared: list[dict] | None = None,
) -> Path:
    """A run folder as the runner and Hydra leave it (metrics None: the job crashed)."""
    seed = next((int(item.split("=")[1]) for item in overrides if item.startswith("seed=")), 0)
    experiment_config = {"name": experiment, "metrics": DECLARED if declared is None else declared}
    config = {"seed": seed, "experiment": experiment_config, "memory": {"fusion": fusion, "rrf_k": 60}}
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "provenance.json").write_text(json.dumps(PROVENANCE))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if per_query is not None:
        (path / "per_query.json").write_text(json.dumps(per_query))
    return path


def sweep(root: Path, recall: dict[tuple[str, int], float | None]) -> Path:
    """A multirun folder: one job per (fusion, seed); None marks a crashed job."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    for number, ((fusion, seed), value) in enumerate(recall.items()):
        metrics = (
            None
            if value is None
            else {"retrieval/recall_all@10": value, "retrieval/search_ms_p50": 1.0 + seed, "run/wall_s": 2.0}
        )
        make_run(
            root / str(number), [f"memory.fusion={fusion}", f"seed={seed}", "embedder=hashing"], metrics, fusion=fusion
        )
    return root


def test_report_rows_are_configurations_with_mean_and_std_over_seeds(tmp_path):
    folder = sweep(
        tmp_path / "sweep", {("rrf", 0): 0.5, ("rrf", 1): 0.7, ("bm25", 0): 0.2, ("bm25", 1): 0.4, ("bm25", 2): None}
    )
    out = tmp_path / "report"
    summary = write_report([folder], out, command="python -m memos_lab report sweep --out report")
    assert (summary.runs, summary.failed, summary.configurations) == (5, 1, 2)

    table = pd.read_csv(out / "table.csv")
    assert list(table["memory.fusion"]) == ["rrf", "bm25"]
    assert list(table["seeds"]) == [2, 2] and list(table["failed"]) == [0, 1]
    assert table["retrieval/recall_all@10 mean"].tolist() == pytest.approx([0.6, 0.3])
    assert table["retrieval/recall_all@10 std"].tolist() == pytest.approx([0.1414, 0.1414], abs=1e-4)

    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == "- command: `python -m memos_lab report sweep --out report`"
    assert "| rrf " in report and "0.6 ± 0.14" in report and "0.3 ± 0.14" in report
    assert "settings common to all runs: embedder=hashing" in report
    assert "## Failed runs" in report and str(folder / "4") in report and "no metrics.json" in report
    assert "`abc123` (5)" in report and "Test CPU" in report  # provenance of every run
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 5 and set(runs["git_commit"]) == {"abc123"} and runs["status"].tolist().count("failed") == 1
    assert PROVENANCE["command"] in set(runs["command"])
    for png in ("headline.png", "latency_vs_quality.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC) and f"]({png})" in report


def test_incomplete_or_unreadable_metrics_count_as_failed(tmp_path):
    make_run(tmp_path / "a", ["seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    make_run(tmp_path / "b", ["seed=1"], {"retrieval/mrr": 0.9})  # no run/wall_s: written by an unfinished run
    (tmp_path / "d" / ".hydra").mkdir(parents=True)  # no config: not a run
    make_run(tmp_path / "e", ["seed=3"], None)
    (tmp_path / "e" / "metrics.json").write_text('{"retrieval/mrr": 0.')  # truncated
    summary = write_report([tmp_path], tmp_path / "out", "cmd", metrics=["retrieval/mrr"])
    assert (summary.runs, summary.failed) == (3, 2)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "incomplete metrics.json" in report and "unreadable metrics.json" in report
    assert "| 0.5 " in report  # the one finished run, alone


def test_a_metric_only_some_runs_measured_is_marked_not_failed(tmp_path):
    make_run(tmp_path / "a0", ["memory.fusion=rrf", "seed=0"], {"m/x": 0.5, "m/extra": 1.0, "run/wall_s": 1.0})
    make_run(tmp_path / "a1", ["memory.fusion=rrf", "seed=1"], {"m/x": 0.7, "run/wall_s": 1.0}, fusion="rrf")
    make_run(tmp_path / "b0", ["memory.fusion=bm25", "seed=0"], {"m/x": 0.1, "run/wall_s": 1.0}, fusion="bm25")
    summary = write_report([tmp_path], tmp_path / "out", "cmd", metrics=["m/x", "m/extra"])
    assert summary.failed == 0
    rows = {
        line.split("|")[2].strip(): line
        for line in (tmp_path / "out" / "report.md").read_text().splitlines()
        if line.startswith("| ")
    }
    assert "| 1 (n=1) " in rows["rrf"] and rows["bm25"].rstrip(" |").endswith("n/a")


def test_jobs_an_interrupted_sweep_never_started_are_reported_as_failed(tmp_path):
    record = {
        "hydra": {
            "sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
            "overrides": {"task": ["embedder=hashing", "memory.fusion=rrf,bm25", "seed=0,1"]},
        },
        "seed": 0,
        "experiment": {"name": "retrieval"},
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(record))
    for number, seed in ((0, 0), (1, 1)):  # jobs 2 and 3 (bm25) never started
        make_run(
            tmp_path / str(number),
            ["embedder=hashing", "memory.fusion=rrf", f"seed={seed}"],
            {"retrieval/mrr": 0.5, "run/wall_s": 1.0},
        )
    summary = write_report([tmp_path], tmp_path / "out", "cmd", metrics=["retrieval/mrr"])
    assert (summary.runs, summary.failed, summary.configurations) == (4, 2, 2)
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert table.set_index("memory.fusion")["failed"].to_dict() == {"rrf": 0, "bm25": 2}
    report = (tmp_path / "out" / "report.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith(f"| `{tmp_path / '3'}` "))
    assert [cell.strip() for cell in line.split("|")[2:5]] == [
        "1",
        "`embedder=hashing memory.fusion=bm25`",
        "never started (the sweep was stopped before this job)",
    ]


def test_all_runs_failed_is_still_a_report(tmp_path):
    folder = sweep(tmp_path / "sweep", {("rrf", 0): None, ("bm25", 0): None})
    write_report([folder], tmp_path / "out", "cmd", metrics=["retrieval/recall_all@10"])
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert table["failed"].tolist() == [1, 1] and table["retrieval/recall_all@10 mean"].isna().all()
    assert "| failed " in (tmp_path / "out" / "report.md").read_text()


def test_default_metrics_come_from_the_experiment_config(tmp_path):
    run = make_run(tmp_path / "r", ["seed=0"], {"retrieval/mrr": 0.5, "retrieval/ndcg@10": 0.4, "run/wall_s": 1.0})
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["experiment"]["report_metrics"] = ["retrieval/ndcg@10"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_report([tmp_path], tmp_path / "out", "cmd")
    header = (tmp_path / "out" / "table.csv").read_text().splitlines()[0]
    assert "retrieval/ndcg@10 mean" in header and "retrieval/mrr" not in header


def test_unswept_default_is_read_from_the_run_config(tmp_path):
    make_run(tmp_path / "a", ["memory.rrf_k=10"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    make_run(tmp_path / "b", [], {"retrieval/mrr": 0.6, "run/wall_s": 1.0})  # the default, rrf_k: 60
    write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", "cmd")
    assert pd.read_csv(tmp_path / "out" / "table.csv")["memory.rrf_k"].tolist() == [10, 60]


def per_query_scores(values: list[float]) -> dict[str, dict[str, float]]:
    return {"retrieval/recall_all@10": {f"q{index}": value for index, value in enumerate(values)}}


def test_paired_test_pairs_queries_per_seed_and_flags_a_real_difference(tmp_path):
    weak, strong = [0.0] * 30 + [1.0] * 10, [1.0] * 35 + [0.0] * 5
    for seed in (0, 1):
        for name, scores in (("rrf", weak), ("bm25", strong), ("dense", weak)):
            make_run(
                tmp_path / f"{name}{seed}", [f"memory.fusion={name}", f"seed={seed}"],
                {"retrieval/recall_all@10": sum(scores) / len(scores), "run/wall_s": 1.0},
                per_query=per_query_scores(scores), fusion=name,
            )  # fmt: skip
    write_report([tmp_path], tmp_path / "out", "cmd", metrics=["retrieval/recall_all@10"])
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Paired significance tests")[1].split("##")[0]
    rows = {
        tuple(cell.strip() for cell in line.split("|")[2:4]): line for line in section.splitlines() if "| #" in line
    }
    assert len(rows) == 3  # configurations #1 bm25, #2 dense, #3 rrf (table order)
    assert "| 80 " in rows[("#1", "#2")]  # 40 queries x 2 seeds, paired
    assert rows[("#1", "#2")].rstrip(" |").endswith("yes")
    identical = rows[("#2", "#3")]
    assert "| 1 " in identical and identical.rstrip(" |").endswith("no")


def test_folder_without_runs_explains_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    for folder, message in ((tmp_path / "empty", "it is empty"), (tmp_path / "other", r"1 entries \(notes.txt\)")):
        with pytest.raises(DataError, match=f"no runs under {folder}.*{message}"):
            write_report([folder], tmp_path / "out", "cmd")
    with pytest.raises(DataError, match="no such folder"):
        write_report([tmp_path / "missing"], tmp_path / "out", "cmd")
    assert not (tmp_path / "out").exists()


def test_runs_of_different_experiments_are_not_mixed(tmp_path):
    make_run(tmp_path / "a" / "0", ["seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    make_run(tmp_path / "b" / "0", ["seed=0"], {"edit/accuracy": 0.5, "run/wall_s": 1.0}, experiment="knowledge_update")
    with pytest.raises(DataError, match=r"2 different experiments \(knowledge_update: 1 run.*retrieval: 1 run"):
        write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", "cmd")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x"], "give run folders or --from-table"),
        (["{runs}"], "the following arguments are required: --out"),
        (
            ["{runs}", "--out", "{out}", "--metrics", "retrieval/nosuch"],
            "no run measured 'retrieval/nosuch'; available: retrieval/mrr",
        ),
        (["{empty}", "--out", "{out}"], "no runs under"),
    ],
)
def test_report_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    make_run(tmp_path / "runs" / "0", ["seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    (tmp_path / "empty").mkdir()
    paths = {"runs": tmp_path / "runs", "out": tmp_path / "out", "empty": tmp_path / "empty"}
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *(arg.format(**paths) for arg in args)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_report_cli_writes_the_report(tmp_path, capsys):
    folder = sweep(tmp_path / "sweep", {("rrf", 0): 0.5, ("bm25", 0): 0.2})
    args = [str(folder), "--out", str(tmp_path / "out"), "--metrics", "retrieval/recall_all@10", "--note", "suite x.sh"]
    main(["report", *args])
    assert "2 configuration(s), 2 run(s), 0 failed" in capsys.readouterr().out
    report = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert report[2] == f"- command: `python -m memos_lab report {' '.join(args[:5])} --note 'suite x.sh'`"
    assert report[3] == "- note: suite x.sh"


def test_the_report_reads_units_and_directions_from_the_declarations(tmp_path):
    declared = [{"name": "lora/reliability", "unit": "fraction", "higher_is_better": True, "version": 2},
                {"name": "lora/train_s", "unit": "s", "higher_is_better": False, "version": 1}]  # fmt: skip
    for seed in (0, 1):
        metrics = {"lora/reliability": 0.9 + seed / 20, "lora/train_s": 10.0 + seed, "run/wall_s": 20.0}
        make_run(tmp_path / "runs" / str(seed), [f"seed={seed}"], metrics, experiment="lora_update", declared=declared)
    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out, command="report", metrics=["lora/reliability", "lora/train_s"])
    report = (out / "report.md").read_text()
    assert "| lora/reliability | fraction | higher is better |         2 |" in report
    assert "| lora/train_s     | s        | lower is better  |         1 |" in report
    assert (out / "latency_vs_quality.png").read_bytes().startswith(PNG_MAGIC)  # quality against the declared time


def test_runs_with_two_versions_of_a_metric_are_not_mixed(tmp_path):
    for seed, version in ((0, 1), (1, 2)):
        declared = [{"name": "lora/reliability", "unit": "fraction", "higher_is_better": True, "version": version}]
        make_run(tmp_path / "runs" / str(seed), [f"seed={seed}"], {"lora/reliability": 0.5, "run/wall_s": 1.0},
                 experiment="lora_update", declared=declared)  # fmt: skip
    with pytest.raises(ConfigError, match="'lora/reliability' has version 1 in some runs and 2 in"):
        write_report([tmp_path / "runs"], tmp_path / "report", command="report", metrics=["lora/reliability"])


def qa_run(path: Path, overrides: list[str], answer_prompt: str, f1: dict[str, float]) -> Path:
    """A finished qa run: pinned settings in its provenance, per-question F1."""
    make_run(path, overrides, {"qa/f1": sum(f1.values()) / len(f1), "run/wall_s": 1.0}, experiment="qa",
             per_query={"qa/f1": f1})  # fmt: skip
    config = yaml.safe_load((path / "config.yaml").read_text())
    config["experiment"].update(pinned=["prompt.answer.version"], ci_metrics=["qa/f1"])
    config["prompt"] = {"answer": {"version": answer_prompt}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    provenance = {**PROVENANCE, "pinned": {"prompt.answer.version": answer_prompt}}
    (path / "provenance.json").write_text(json.dumps(provenance))
    return path


def test_runs_with_different_prompt_versions_are_not_mixed_without_the_switch(tmp_path, capsys):
    scores = {f"q{i}": float(i % 2) for i in range(20)}
    qa_run(tmp_path / "runs" / "a", ["experiment.context=none"], "answer_v1", scores)
    qa_run(tmp_path / "runs" / "b", ["experiment.context=oracle"], "answer_v2", scores)
    with pytest.raises(DataError, match="differ in the pinned setting prompt.answer.version .*--mix-pinned"):
        write_report([tmp_path / "runs"], tmp_path / "out", command="report")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pinned setting prompt.answer.version" in error

    write_report([tmp_path / "runs"], tmp_path / "out", command="report", mix_pinned=True)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pinned settings: prompt.answer.version=mixed: answer_v1, answer_v2" in report


def test_the_report_prints_bootstrap_cis_and_the_pinned_prompt(tmp_path):
    qa_run(
        tmp_path / "runs" / "a", ["experiment.context=none"], "answer_v1", {f"q{i}": float(i % 2) for i in range(20)}
    )
    qa_run(tmp_path / "runs" / "b", ["experiment.context=oracle"], "answer_v1", {f"q{i}": 1.0 for i in range(20)})
    write_report([tmp_path / "runs"], tmp_path / "out", command="report")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pinned settings: prompt.answer.version=answer_v1" in report
    assert "## Bootstrap 95% confidence intervals" in report
    rows = [line.replace(" ", "") for line in report.splitlines()]
    assert "|#2|qa/f1|20|1|[1,1]|" in rows  # all 1: no spread
    [first] = [row for row in rows if row.startswith("|#1|qa/f1|20|0.5|[")]
    low, high = (float(x) for x in first.split("[")[1].rstrip("]|").split(","))
    assert 0.25 <= low < 0.5 < high <= 0.75  # 20 coin flips: about 0.5 ± 0.22


# ---- run folders as untrusted data (issue 22, items 7 and 8) ------------------------------------------

HOSTILE_PROVENANCE = {
    "git_commit": "abc`def <script>alert(1)</script>\n# injected heading",
    "command": "=cmd|' /C calc'!A0",
    "hardware": {"<img src=x onerror=alert(1)>": "+1|[x](javascript:alert(1))", "cpu": "@SUM(1+1)"},
    "packages": {"torch": "-2+3"},
}


def rendered(markdown: str) -> str:
    """report.md as a GitHub-like renderer shows it (raw HTML allowed, as GitHub's sanitiser would see it)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


def test_hostile_provenance_is_inert_in_report_md_and_runs_csv(tmp_path):
    make_run(tmp_path / "a", ["seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    make_run(tmp_path / "b", ["seed=1", "memory.fusion='=HYPERLINK(1)'"], {"=x|y": 0.1, "run/wall_s": 1.0})
    (tmp_path / "b" / "provenance.json").write_text(json.dumps(HOSTILE_PROVENANCE))
    write_report([tmp_path], tmp_path / "out", "cmd", metrics=["retrieval/mrr", "=x|y"])

    markdown = (tmp_path / "out" / "report.md").read_text()
    assert not any(line.startswith("# injected") for line in markdown.splitlines())
    html = rendered(markdown)
    for tag in ("<script", "<a ", "<h1>injected"):
        assert tag not in html
    assert not re.search("<[^>]*onerror", html)  # the plots are the only images
    # shown, literally, as text: the values are not lost
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "alert(1)&lt;/script&gt;" in html
    assert "<code>=cmd|' /C calc'!A0</code>" in html
    tables = re.findall(r"(?m)(?:^\|.*\n)+", markdown)
    for table in tables:  # an unescaped | in a value would add a cell, and hide the rest of the row
        assert len({len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}) == 1, table

    import csv

    for name in ("runs.csv", "table.csv"):
        with open(tmp_path / "out" / name, newline="") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        formulas = [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
        assert all(re.fullmatch(r"[+-]?[\d.]+(e[+-]?\d+)?", cell) for cell in formulas), formulas
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert "'=cmd|' /C calc'!A0" in set(runs["command"])  # neutralised by a leading quote, not dropped


MALFORMED = {
    "provenance is a list": ("provenance.json", "[]", "provenance.json: expected an object, got a list"),
    "hardware is a string": ("provenance.json", '{"hardware": "abc"}', "provenance.json: hardware: expected an object"),
    "metrics nested 200,000 deep": ("metrics.json", "[" * 200_000, "metrics.json: JSON nested deeper than"),
    "metrics declared as a string": (
        "config.yaml", yaml.safe_dump({"experiment": {"name": "retrieval", "metrics": "abc"}}),
        "config.yaml: experiment.metrics is not a list of metric declarations",
    ),
    "a per-query score is a string": (
        "per_query.json", '{"retrieval/mrr": {"q1": "high"}}', "per_query.json: retrieval/mrr.q1: expected a number",
    ),
    "config nested 200,000 deep": ("config.yaml", "[" * 200_000, "config.yaml: "),
    "a YAML alias bomb": ("config.yaml", "a: &a [x, x]\nb: &b [*a, *a]\n", "aliases (*name) are not allowed"),
    "an override Hydra cannot parse": (".hydra/overrides.yaml", "['a=[']", "overrides.yaml: unreadable override"),
    "an override holding a lone surrogate (the fuzz campaign's find)": (
        ".hydra/overrides.yaml", '["memory=\\uD97C\\uDCBD"]', "overrides.yaml: not valid YAML (a string holds a lone surrogate",
    ),
    "Hydra's record has a string runtime": (
        ".hydra/hydra.yaml", "hydra: {runtime: abc}", "hydra.yaml: hydra.runtime: a str, not a mapping",
    ),
    "a fraction of 1e308": (
        "metrics.json", '{"retrieval/mrr": 1e308, "run/wall_s": 1.0}',
        "metrics.json: retrieval/mrr = 1e+308 is absurd for a metric in fraction",
    ),
    "more metrics than any experiment reports": (
        "metrics.json", json.dumps({f"m{i}": 0.5 for i in range(10_001)} | {"run/wall_s": 1.0}),
        "metrics.json: 10002 metrics, more than the 10000 a report shows",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("name", "content", "reason"), MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_file_fails_its_run_with_one_line_and_no_traceback(tmp_path, capsys, name, content, reason):
    scores = {"retrieval/mrr": {"q1": 0.5, "q2": 1.0}}
    make_run(tmp_path / "runs" / "a", ["seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0}, per_query=scores)
    make_run(tmp_path / "runs" / "b", ["seed=1"], {"retrieval/mrr": 0.6, "run/wall_s": 1.0}, per_query=scores)
    (tmp_path / "runs" / "b" / name).write_text(content)

    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) in (0, None)
    assert "Traceback" not in capsys.readouterr().err
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "runs: 2 (1 finished, 1 failed)" in markdown
    [row] = [line for line in markdown.splitlines() if line.startswith(f"| `{tmp_path / 'runs' / 'b'}`")]
    assert reason in row.replace("\\", ""), row


@pytest.mark.timeout(60)
def test_a_sweep_record_planning_a_trillion_jobs_lists_none_of_them(tmp_path):
    record = {
        "hydra": {
            "sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
            "overrides": {"task": ["a=range(0,1000000)", "b=range(0,1000000)"]},
        },
        "experiment": {"name": "retrieval"},
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(record))
    make_run(tmp_path / "0", ["a=0", "b=0", "seed=0"], {"retrieval/mrr": 0.5, "run/wall_s": 1.0})
    summary = write_report([tmp_path], tmp_path / "out", "cmd")
    assert (summary.runs, summary.failed) == (1, 0)


def test_an_absurd_value_of_an_undeclared_metric_is_shown_as_it_is(tmp_path):
    make_run(tmp_path / "a", ["seed=0"], {"other/score": 1e308, "run/wall_s": 1.0})
    make_run(tmp_path / "b", ["seed=1"], {"other/score": 1e308, "run/wall_s": 1.0})
    summary = write_report([tmp_path], tmp_path / "out", "cmd", metrics=["other/score"])
    assert summary.failed == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1e+308" in report and "Not drawn: the values do not fit a plot axis" in report


def test_markdown_and_csv_escapes():
    assert md_text("a_b _c_ *d* [e](f) <g> x|y\n# h") == "a_b \\_c\\_ \\*d\\* \\[e\\](f) \\<g\\> x\\|y\\\\n# h"
    assert md_code("a`b") == "``a`b``" and md_code("`a") == "`` `a ``" and md_code("x|y", in_table=True) == "`x\\|y`"
    assert [csv_cell(text) for text in ("=1+1", "-0.5", "-x", "@a", "\tb", "ok", 3)] == [
        "'=1+1", "-0.5", "'-x", "'@a", "'\tb", "ok", 3,
    ]  # fmt: skip
