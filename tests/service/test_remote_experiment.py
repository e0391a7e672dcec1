"""`mos=remote`: the main job against a real server gives the in-process metrics, the token stays out of
the config and the run folder, and a remote MOS the run cannot trust is refused (issue 24, §5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import AccessDeniedError, ConfigError
from memos_lab.experiments import qa
from memos_lab.experiments.common import build_mos
from memos_lab.loggers.base import Tracker
from memos_lab.models.embedder import HashingEmbedder
from tests.service.conftest import ADMIN_TOKEN

MAIN_JOB = ["embedder=hashing", "logger=none", "dataset.n_conversations=2", "dataset.n_sessions=2"]
TOKEN_VARIABLE = "MEMOS_LAB_TEST_SERVER_TOKEN"


def remote(url: str) -> list[str]:
    return ["mos=remote", f"mos.url={url}", f"mos.token_env={TOKEN_VARIABLE}"]


def run_job(run_dir: Path, *overrides: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != TOKEN_VARIABLE}
    if token is not None:
        env[TOKEN_VARIABLE] = token
    return subprocess.run(
        [sys.executable, "-m", "memos_lab", "run", *MAIN_JOB, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=run_dir.parent,
    )  # fmt: skip


def scores(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timing = [name for name in metrics if "search_ms" in name or name.endswith(("_per_s", "wall_s"))]
    assert len(timing) == 4  # latency p50 and p95, ingest rate, wall time: never equal twice
    return {name: value for name, value in metrics.items() if name not in timing}


@pytest.mark.slow
@pytest.mark.timeout(900)  # two runs of the main job in subprocesses
def test_the_main_job_gives_the_same_metrics_in_process_and_against_a_server(launch, tmp_path):
    api = launch(tmp_path / "root")
    local = run_job(tmp_path / "local")
    assert local.returncode == 0, local.stderr
    served = run_job(tmp_path / "remote", *remote(api.server.url), token=ADMIN_TOKEN)
    assert served.returncode == 0, served.stderr
    expected = scores(tmp_path / "local")
    assert len(expected) > 20 and expected["retrieval/index_mb"] > 0 and expected["retrieval/items"] > 0
    assert scores(tmp_path / "remote") == expected
    registry = json.loads((tmp_path / "root" / "registry.json").read_text())
    assert len(registry["cubes"]) == 2  # the run's two conversations went to the server
    for path in (tmp_path / "remote").rglob("*"):  # config, overrides, provenance, logs
        if path.is_file():
            assert ADMIN_TOKEN not in path.read_text(errors="replace"), path


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*MAIN_JOB, *overrides])


def test_runs_on_one_server_keep_apart_and_an_untrusted_remote_mos_is_refused(api, monkeypatch):
    embedder = HashingEmbedder(dim=512)  # the server's (tests/service/conftest.py: embedder=hashing)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match=f"\\${TOKEN_VARIABLE} is unset"):
        build_mos(composed(*remote(api.server.url)), embedder)
    monkeypatch.setenv(TOKEN_VARIABLE, "not-the-admin-token")
    with pytest.raises(AccessDeniedError, match=f"refused the admin token in \\${TOKEN_VARIABLE}"):
        build_mos(composed(*remote(api.server.url)), embedder)
    monkeypatch.setenv(TOKEN_VARIABLE, ADMIN_TOKEN)
    with pytest.raises(ConfigError, match="start the server with the run's"):  # 256 dims: another embedder
        build_mos(composed(*remote(api.server.url), "embedder.dim=256"), HashingEmbedder(dim=256))
    with pytest.raises(ConfigError, match="experiment=qa needs mos=local"):
        qa.run(composed(*remote(api.server.url), "experiment=qa", "model=tiny_llama"), Tracker())
    with pytest.raises(ConfigError, match="mos.token_env must name an environment variable"):
        build_mos(composed(*remote(api.server.url), "mos.token_env=not-a-name"), embedder)

    first, second = (build_mos(composed(*remote(api.server.url)), embedder) for _ in range(2))
    for run, fact in ((first, "alice likes tea"), (second, "alice likes coffee")):  # the same names in both runs
        run.register_user("alice")
        assert run.create_cube("alice", "conv-0").cube_id == "conv-0"
        run.add("alice", "conv-0", [fact])
    assert [item.text for item in first.get_all("alice", "conv-0")] == ["alice likes tea"]
    assert [item.text for item in second.get_all("alice", "conv-0")] == ["alice likes coffee"]
    assert first.readable_cubes("alice") == ["conv-0"] == second.readable_cubes("alice")
    assert [hit.cube_id for hit in second.search("alice", "coffee", top_k=1)] == ["conv-0"]
    assert first.describe("alice", "conv-0").items == 1
    first.close()
    second.close()
