"""The served backend end to end against a real `transformers serve` process: answers come back, usage is
counted, greedy answers equal the local backend's on the same weights, and the experiment runs on it.

What the server honours (transformers 5.23): greedy decoding by default (it reports `temperature` as
ignored), `max_tokens`, and the model's own end-of-turn token; it answers as `<folder>@main`, and a model
name other than the one it is pinned to is refused with HTTP 400.
"""

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.eval.judge import LLMJudge
from memos_lab.experiments import scheduling
from memos_lab.generation.base import ChatRequest
from memos_lab.generation.local import LocalGenerator
from memos_lab.generation.served import ServedGenerator
from memos_lab.loggers.base import Tracker
from memos_lab.models.llm import load_pretrained

pytestmark = [pytest.mark.served, pytest.mark.usefixtures("single_thread")]

QUESTIONS = ["Where does Maya live?", "What is the name of Leo's dog?", "hello there", "Which hobby?"]


def test_served_greedy_answers_equal_local_ones_and_usage_is_counted(served_url: str, tiny_folder: Path):
    served = ServedGenerator(served_url, str(tiny_folder), concurrency=4)
    local = LocalGenerator(load_pretrained(str(tiny_folder), device="cpu", dtype="float32"), batch_size=4)
    requests = [ChatRequest.user(q, system="Answer briefly.", request_id=str(i)) for i, q in enumerate(QUESTIONS)]
    by_server, by_local = served.generate(requests, 12), local.generate(requests, 12)
    assert not any(g.failed for g in by_server)
    assert served.served_as.startswith(str(tiny_folder))
    assert len({g.text for g in by_local}) > 1  # the answers depend on the question
    assert [g.text for g in by_server] == [g.text for g in by_local]
    assert [g.prompt_tokens for g in by_server] == [g.prompt_tokens for g in by_local]
    assert [g.completion_tokens for g in by_server] == [g.completion_tokens for g in by_local]
    served.close()


def test_the_judge_runs_on_the_served_model(served_url: str, tiny_folder: Path):
    judge = LLMJudge(ServedGenerator(served_url, str(tiny_folder)))
    verdicts = judge.judge_many([("Where does Maya live?", "Lisbon", "in Lisbon")] * 2)
    # A random model gives no verdict: each one is a counted None, and the usage is still reported.
    assert len(verdicts) == 2 and all(v in (True, False, None) for v in verdicts)
    assert judge.prompt_tokens > 0 and judge.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_the_scheduling_experiment_answers_through_the_server(served_url: str, tiny_folder: Path, stream: bool):
    overrides = [
        "experiment=scheduling", "model=tiny_llama", "embedder=hashing", "logger=none", "dataset.n_conversations=1",
        "dataset.n_sessions=2", "experiment.working_memory.max_items=4",
        "experiment.max_new_tokens=4",
        "llm=openai_compatible", f"llm.base_url={served_url}", f"llm.model={tiny_folder}", f"llm.stream={str(stream).lower()}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        kv = compose("config", overrides=[*overrides, "experiment.mode=kv"])
    metrics = scheduling.run(cfg, Tracker())
    assert metrics["qa/answer_failures"] == 0 and metrics["qa/questions"] > 0 and "qa/f1" in metrics
    assert metrics["qa/prompt_tokens_total"] > 0 and metrics["qa/completion_tokens_total"] > 0
    assert all(math.isfinite(value) for value in metrics.values())
    assert ("latency/ttft_ms_p50" in metrics) is stream
    with pytest.raises(ConfigError, match="needs the model's weights"):
        scheduling.run(kv, Tracker())


def test_a_model_the_server_does_not_serve_is_one_line(served_url: str):
    with pytest.raises(ConfigError, match="'no-such-model'.*HTTP 400"):
        ServedGenerator(served_url, "no-such-model", max_retries=0)
