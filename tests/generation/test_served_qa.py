"""The QA protocol with a served answerer and judge: a real `transformers serve` process (tests/generation/conftest.py)."""

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab import cli
from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments import qa
from memos_lab.loggers.base import Tracker

pytestmark = [pytest.mark.served, pytest.mark.usefixtures("single_thread")]
LOCOMO = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "locomo_tiny.json"


class Recorder(Tracker):
    def __init__(self):
        self.artifacts = {}

    def log_artifact(self, name, data):
        self.artifacts[name] = data


def qa_run(*overrides):
    base = ["experiment=qa", "dataset=locomo", f"dataset.path={LOCOMO}", "dataset.limit=1", "embedder=hashing",
            "logger=none", "experiment.max_new_tokens=6", "experiment.top_k=3"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*base, *overrides])
    tracker = Recorder()
    return qa.run(cfg, tracker), tracker.artifacts


def test_served_answerer_and_judge_end_to_end(served_url: str, tiny_folder: Path):
    served = ["llm=openai_compatible", f"llm.base_url={served_url}", f"llm.model={tiny_folder}"]
    judge = ["judge=openai_compatible", f"judge.generator.base_url={served_url}", f"judge.generator.model={tiny_folder}",
             "experiment.judge=true"]  # fmt: skip
    metrics, artifacts = qa_run(*served, *judge)
    rows = artifacts[qa.ANSWERS_ARTIFACT]["questions"]
    assert metrics["qa/answer_failures"] == 0 and len(rows) == 5
    assert metrics["qa/prompt_tokens_mean"] > 0  # read from the server's usage
    # Every answered question got a verdict or a counted judge failure (a random model rarely says CORRECT/WRONG).
    assert sum(row["verdict"] is not None for row in rows) + metrics["qa/judge_failures"] == 5
    assert metrics["qa/judge_prompt_tokens"] > 0
    assert artifacts[qa.SETUP_ARTIFACT]["answerer"]["backend"] != "local"
    # The same weights answering in-process give the same greedy answers.
    _, local_artifacts = qa_run("model=hf", f"model.name_or_path={tiny_folder}", "device=cpu")
    assert [row["answer"] for row in rows] == [
        row["answer"] for row in local_artifacts[qa.ANSWERS_ARTIFACT]["questions"]
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_served_qa_run_writes_finite_metrics_with_and_without_streaming(
    served_url: str, tiny_folder: Path, stream: bool, tmp_path: Path
):
    # Issue 22 item 1: without streaming a served answer has no TTFT; the NaN it gave ended the run with no
    # metrics.json. Through the CLI and the runner, as a user runs it.
    cli.main(["run", "experiment=qa", "dataset=locomo", f"dataset.path={LOCOMO}", "dataset.limit=1",
              "embedder=hashing", "logger=none", "experiment.max_new_tokens=6", "experiment.top_k=3",
              "llm=openai_compatible", f"llm.base_url={served_url}", f"llm.model={tiny_folder}",
              f"llm.stream={str(stream).lower()}", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(math.isfinite(value) for value in metrics.values())
    assert ("latency/ttft_ms_p50" in metrics) is stream and "run/unmeasured" not in metrics
    assert metrics["latency/answer_ms_p50"] > 0 and metrics["qa/answer_failures"] == 0


def test_a_form_that_needs_the_weights_refuses_a_served_model(served_url: str, tiny_folder: Path):
    with pytest.raises(ConfigError, match="weights"):
        qa_run("llm=openai_compatible", f"llm.base_url={served_url}", f"llm.model={tiny_folder}", "experiment.form=kv")
