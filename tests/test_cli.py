"""The command line as users meet it: subprocesses, exit codes, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memos_lab.cli import config_groups, validate_overrides
from memos_lab.errors import ConfigError

SMALL_RUN = ["embedder=hashing", "logger=none", "dataset.n_conversations=2", "dataset.n_sessions=3"]


def memos_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memos_lab", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_help_lists_commands_and_group_choices(tmp_path):
    result = memos_lab("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "run" in result.stdout
    for group, choices in config_groups().items():
        assert group in result.stdout
        assert all(choice in result.stdout for choice in choices)


@pytest.mark.parametrize(
    "override, message",
    [
        ("memory=nosuch", "unknown choice 'nosuch' for config group 'memory'; valid: general_text"),
        ("experiment=retrieval,bogus", "unknown choice 'bogus' for config group 'experiment'"),
        ("memory=[", "malformed override"),
        ("no_such_key=1", "no_such_key"),
        ("seed=abc", "override seed='abc': seed takes a number"),
        ("experiment.top_k=abc", "experiment.top_k takes a number"),
        ("seed=1,abc", "seed takes a number"),
        ("+hydra.callbacks.x._target_=os.system", "hydra.callbacks.x._target_: 'os.system' is not a Hydra Callback"),
        ("logger=none", None),
        ("memory.lexical_weight=0.5", None),
    ],
)
def test_bad_overrides_fail_before_any_work(override, message):
    if message is None:  # a well-typed override passes
        validate_overrides([override])
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate_overrides([override])


def test_bad_override_exits_2_without_traceback(tmp_path):
    result = memos_lab("run", "model=gpt5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown choice 'gpt5' for config group 'model'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_callback_naming_any_callable_exits_2_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    callback = ["+hydra.callbacks.x._target_=os.system", f"+hydra.callbacks.x._args_=['touch {marker}']"]
    result = memos_lab("run", *SMALL_RUN, *callback, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: hydra.callbacks.x._target_: 'os.system' is not a Hydra Callback class"
    ]
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_wrongly_typed_value_exits_2(tmp_path):
    result = memos_lab("run", *SMALL_RUN, "memory.rrf_k=abc", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "rrf_k" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_command_exits_2(tmp_path):
    result = memos_lab("fly", cwd=tmp_path)
    assert result.returncode == 2 and "unknown command 'fly'" in result.stderr


def test_run_writes_metrics_config_and_report(tmp_path):
    run_dir = tmp_path / "run"
    result = memos_lab("run", *SMALL_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in (1, 5, 10):
        assert 0.0 <= metrics[f"retrieval/recall_all@{k}"] <= metrics[f"retrieval/recall_any@{k}"] <= 1.0
    for name in ("retrieval/ndcg@10", "retrieval/mrr", "retrieval/search_ms_p50", "retrieval/search_ms_p95",
                 "retrieval/ingest_items_per_s", "retrieval/single-hop/recall_all@10", "run/wall_s"):  # fmt: skip
        assert name in metrics
    assert metrics["retrieval/recall_all@10"] > 0.3  # lexical search over hashed n-grams finds real evidence
    assert all(isinstance(value, float) for value in metrics.values())
    assert "experiment=retrieval" in (run_dir / "report.md").read_text()
    assert "| torch " in (run_dir / "report.md").read_text()
    assert "embedder:" in (run_dir / "config.yaml").read_text()


@pytest.mark.integration
def test_main_job_with_minilm_writes_an_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    result = memos_lab("run", "dataset.n_conversations=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["retrieval/recall_any@10"] > 0.3
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
