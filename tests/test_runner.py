import json

import pytest
from omegaconf import OmegaConf

from memos_lab.loggers.base import Tracker
from memos_lab.runner import _checked_metrics, run_experiment


class RecordingTracker(Tracker):
    instances: list["RecordingTracker"] = []

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
