import json
from typing import ClassVar

import pytest
from omegaconf import OmegaConf

from memos_lab.errors import ConfigError, DataError
from memos_lab.loggers.base import Tracker
from memos_lab.runner import _checked_metrics, read_metrics, run_experiment


class RecordingTracker(Tracker):
    instances: ClassVar[list["RecordingTracker"]] = []

    def __init__(self):
        self.finished = None
        RecordingTracker.instances.append(self)

    def finish(self, metrics, failed=False):
        self.finished = (dict(metrics), failed)


def constant_experiment(cfg, tracker):
    tracker.log({"x": 1.0}, step=0)
    return {"toy/score": 0.5, "toy/count": 3}


def failing_experiment(cfg, tracker):
    raise RuntimeError("boom")


def make_cfg(fn):
    return OmegaConf.create(
        {
            "seed": 0,
            "threads": None,
            "experiment": {"name": "toy", "fn": fn},
            "logger": {"_target_": f"{__name__}.RecordingTracker"},
        }
    )


def test_run_writes_flat_numeric_metrics_and_finishes_tracker(tmp_path):
    metrics = run_experiment(make_cfg(f"{__name__}.constant_experiment"), tmp_path, {"experiment": "toy"})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics and written["toy/score"] == 0.5 and written["toy/count"] == 3.0
    assert "run/wall_s" in written
    assert RecordingTracker.instances[-1].finished == (metrics, False)
    report = (tmp_path / "report.md").read_text()
    assert "toy/score" in report and "git commit" in report and "cpu_count" in report


def test_failed_experiment_writes_no_metrics_and_marks_tracker_failed(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(make_cfg(f"{__name__}.failing_experiment"), tmp_path, {})
    assert not (tmp_path / "metrics.json").exists()
    assert RecordingTracker.instances[-1].finished == ({}, True)


@pytest.mark.parametrize("bad", [{"a": "text"}, {"a": float("nan")}, {"a": True}])
def test_non_numeric_metrics_are_a_bug(bad):
    with pytest.raises((TypeError, ValueError), match="'a'"):
        _checked_metrics(bad)


def unmeasurable_experiment(cfg, tracker):
    return {"toy/score": 0.5, "latency/ttft_ms_p50": float("nan"), "toy/ratio": float("inf")}


def test_a_nan_or_infinite_metric_is_left_out_and_counted_instead_of_ending_the_run(tmp_path, caplog):
    # Issue 22 item 1: a NaN TTFT ended a served run with no metrics.json, losing the whole run.
    run_experiment(make_cfg(f"{__name__}.unmeasurable_experiment"), tmp_path, {})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["toy/score"] == 0.5 and written["run/unmeasured"] == 2
    assert "latency/ttft_ms_p50" not in written and "toy/ratio" not in written
    assert (
        "Unmeasured (NaN or infinite, left out): latency/ttft_ms_p50, toy/ratio" in (tmp_path / "report.md").read_text()
    )
    assert "latency/ttft_ms_p50 is nan, left out" in caplog.text
    assert read_metrics(tmp_path) == written


def experiment_with_artifact(cfg, tracker):
    tracker.log_artifact("per_query", {"toy/score": {"q1": 1.0, "q2": 0.0}})
    return {"toy/score": 0.5}


def test_artifacts_are_written_by_the_runner_beside_the_metrics(tmp_path):
    run_experiment(make_cfg(f"{__name__}.experiment_with_artifact"), tmp_path, {})
    assert json.loads((tmp_path / "per_query.json").read_text()) == {"toy/score": {"q1": 1.0, "q2": 0.0}}
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert {"git_commit", "command", "hardware", "packages"} <= set(provenance)


@pytest.mark.parametrize("name", ["metrics", "../x", ""])
def test_artifact_names_cannot_clobber_run_files(name):
    from memos_lab.runner import _RunTracker

    with pytest.raises(ValueError, match="artefact name"):
        _RunTracker(Tracker()).log_artifact(name, {})


counted_runs = []


def counting_experiment(cfg, tracker):
    counted_runs.append(cfg.seed)
    return {"toy/score": 0.25}


def test_resume_skips_a_finished_run_of_the_same_config_and_reruns_an_unfinished_one(tmp_path):
    cfg = make_cfg(f"{__name__}.counting_experiment")
    first = run_experiment(cfg, tmp_path, {})
    cfg.resume = True
    assert run_experiment(cfg, tmp_path, {}) == first and len(counted_runs) == 1  # skipped
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    del metrics["run/wall_s"]  # as if the run had been cut short
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    run_experiment(cfg, tmp_path, {})
    assert len(counted_runs) == 2
    cfg.seed = 1
    with pytest.raises(ConfigError, match=r"holds a finished run of a different config \(differs in seed\)"):
        run_experiment(cfg, tmp_path, {})
    assert len(counted_runs) == 2


def test_a_rerun_without_resume_removes_the_stale_metrics_first(tmp_path):
    run_experiment(make_cfg(f"{__name__}.constant_experiment"), tmp_path, {})
    with pytest.raises(RuntimeError):
        run_experiment(make_cfg(f"{__name__}.failing_experiment"), tmp_path, {})
    assert not (tmp_path / "metrics.json").exists()  # the report shows this run as failed, not as the old one


def test_an_objective_that_is_not_a_metric_is_named_and_the_run_kept(tmp_path):
    cfg = make_cfg(f"{__name__}.constant_experiment")
    cfg.objective = "toy/nosuch"
    with pytest.raises(
        ConfigError, match="objective 'toy/nosuch' is not a metric of this experiment; valid: run/wall_s, toy/count"
    ):
        run_experiment(cfg, tmp_path, {})
    assert json.loads((tmp_path / "metrics.json").read_text())["toy/score"] == 0.5


def test_metrics_of_an_interrupted_experiment_do_not_count_as_finished(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"toy/score": 0.5, "run/interrupted": 1.0, "run/wall_s": 3.0}))
    with pytest.raises(DataError, match="interrupted"):
        read_metrics(tmp_path)
