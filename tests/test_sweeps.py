"""Sweeps as users run them: launchers, determinism, resume, W&B groups, bad launcher choices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from memos_lab.cli import CONF_DIR, _group_sweep_runs, main, validate_overrides
from memos_lab.runner import run_experiment

pytestmark = pytest.mark.slow  # sweeps in subprocesses: `make test-fast` leaves them out

SMALL_RUN = ["embedder=hashing", "logger=none", "dataset.n_conversations=2", "dataset.n_sessions=3"]
TIMINGS = ("retrieval/search_ms_p50", "retrieval/search_ms_p95", "retrieval/ingest_items_per_s", "run/wall_s")


def memos_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memos_lab", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def untimed(path: Path) -> dict[str, float]:
    metrics = json.loads(path.read_text())
    return {name: value for name, value in metrics.items() if name not in TIMINGS}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> Path:
    """A 2-job sweep with Hydra's basic launcher, shared by the tests below (each copies it before changing it)."""
    root = tmp_path_factory.mktemp("basic")
    result = memos_lab("run", "-m", *SMALL_RUN, "seed=0,1", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "sweep"


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL_RUN, "seed=3"])
    first = run_experiment(cfg, tmp_path / "a", {})
    run_experiment(cfg, tmp_path / "b", {})
    assert untimed(tmp_path / "a" / "metrics.json") == untimed(tmp_path / "b" / "metrics.json")
    assert first["retrieval/recall_all@10"] > 0  # something was measured, not two empty results
    assert (tmp_path / "a" / "per_query.json").read_text() == (tmp_path / "b" / "per_query.json").read_text()


def test_ray_launcher_on_a_local_instance_matches_the_basic_launcher(basic_sweep, tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher", reason="needs hydra-ray-launcher (pip install 'memos_lab[launchers]')"
    )
    sweep = tmp_path / "ray"
    result = memos_lab(
        "run", "-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false", *SMALL_RUN, "seed=0,1", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert untimed(sweep / job / "metrics.json") == untimed(basic_sweep / job / "metrics.json")
    assert untimed(sweep / "0" / "metrics.json") != untimed(sweep / "1" / "metrics.json")  # seeds differ


def test_resume_skips_finished_jobs_and_reruns_the_interrupted_one(basic_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(basic_sweep, sweep)
    finished = (sweep / "0" / "metrics.json").read_text()
    (sweep / "1" / "metrics.json").unlink()  # job 1 was interrupted
    result = memos_lab("run", "-m", *SMALL_RUN, "seed=0,1", "resume=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (sweep / "0" / "metrics.json").read_text() == finished  # untouched: even its wall time is the old one
    assert "skipped" in (sweep / "0" / "cli.log").read_text()
    assert untimed(sweep / "1" / "metrics.json") == untimed(basic_sweep / "1" / "metrics.json")
    report = tmp_path / "report"
    main(["report", str(sweep), "--out", str(report)])
    assert "2 finished, 0 failed" in (report / "report.md").read_text()


def test_resume_refuses_a_folder_of_another_config(basic_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(basic_sweep, sweep)
    result = memos_lab("run", "-m", *SMALL_RUN, "seed=5", "resume=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2
    assert "holds a finished run of a different config (differs in dataset, seed)" in result.stderr
    assert untimed(sweep / "0" / "metrics.json") == untimed(basic_sweep / "0" / "metrics.json")  # nothing lost


def test_jobs_of_one_sweep_share_a_wandb_group_unless_one_is_set():
    cfg = OmegaConf.create({"logger": {"_target_": "memos_lab.loggers.wandb.WandbTracker", "group": None}})
    OmegaConf.set_struct(cfg, True)
    _group_sweep_runs(cfg, "outputs/multiruns/retrieval/2026-11-25_08-00-00")
    assert cfg.logger.group == "outputs/multiruns/retrieval/2026-11-25_08-00-00"
    _group_sweep_runs(cfg, "elsewhere")
    assert cfg.logger.group == "outputs/multiruns/retrieval/2026-11-25_08-00-00"  # a chosen group stays
    no_group = OmegaConf.create({"logger": {"_target_": "memos_lab.loggers.base.Tracker"}})
    _group_sweep_runs(no_group, "x")
    assert "group" not in no_group.logger


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra/launcher=nosuch", "unknown choice 'nosuch' for config group 'hydra/launcher'; valid: basic"),
        ("hydra/sweeper=nosuch", "unknown choice 'nosuch' for config group 'hydra/sweeper'; valid: basic"),
    ],
)
def test_bad_launcher_or_sweeper_fails_before_any_job(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-m", override, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "plugin, overrides",
    [
        ("hydra_plugins.hydra_joblib_launcher", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
        ("hydra_plugins.hydra_ray_launcher", ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]),
        ("hydra_plugins.hydra_ray_launcher", ["hydra/launcher=ray_cluster"]),
        ("hydra_plugins.hydra_submitit_launcher", ["hydra/launcher=slurm", "hydra.launcher.partition=cpu"]),
        (
            "hydra_plugins.hydra_optuna_sweeper",
            ["hydra/sweeper=optuna", "objective=retrieval/mrr", "memory.rrf_k=int(interval(1,100))"],
        ),
        ("hydra_plugins.hydra_optuna_sweeper", ["hparams_search=retrieval_fusion"]),
    ],
)
def test_launcher_and_sweeper_configs_compose(plugin, overrides):
    # Each case needs only its own plugin (pip install 'memos_lab[launchers]' brings them all).
    pytest.importorskip(plugin, reason=f"needs {plugin} (pip install 'memos_lab[launchers]')")
    validate_overrides(overrides)
