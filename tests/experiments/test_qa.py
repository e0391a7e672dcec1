"""The QA protocol end to end on tiny_llama with the hashing embedder and the LoCoMo/LongMemEval fixtures."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.data.schema import ADVERSARIAL, UNANSWERABLE
from memos_lab.errors import ConfigError, DataError
from memos_lab.experiments import qa
from memos_lab.experiments.common import MetricSpec, find_spec
from memos_lab.generation.base import Generation
from memos_lab.loggers.base import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
LOCOMO = [
    "experiment=qa", "dataset=locomo", f"dataset.path={FIXTURES / 'locomo_tiny.json'}", "dataset.limit=1",
    "model=tiny_llama", "embedder=hashing", "logger=none", "experiment.max_new_tokens=2", "experiment.top_k=3",
]  # fmt: skip


class Recorder(Tracker):
    def __init__(self):
        self.artifacts = {}

    def log_artifact(self, name, data):
        self.artifacts[name] = data


def config(*overrides, base=LOCOMO):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def run(*overrides, base=LOCOMO):
    tracker = Recorder()
    cfg = config(*overrides, base=base)
    metrics = qa.run(cfg, tracker)
    declared = [MetricSpec.from_mapping(spec) for spec in cfg.experiment.metrics]
    undeclared = [name for name in metrics if find_spec(declared, name) is None]
    assert not undeclared, f"declare them in conf/experiment/qa.yaml: {undeclared}"
    return metrics, tracker.artifacts


@pytest.fixture
def no_model(monkeypatch):
    """Bad input must be refused before any model is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr("memos_lab.models.llm.build_tiny_llama", refuse)


def test_retrieved_text_run_reports_scores_latency_recall_and_artefacts():
    metrics, artifacts = run()
    rows = artifacts[qa.ANSWERS_ARTIFACT]["questions"]
    assert metrics["qa/questions"] == len(rows) == 5  # conv-a of the fixture
    for name in ("qa/f1", "qa/bleu1", "qa/em", "qa/f1_ci95_low", "qa/f1_ci95_high", "qa/context_tokens_mean",
                 "qa/prompt_tokens_mean", "latency/answer_ms_p50", "latency/answer_ms_p95", "latency/ttft_ms_p50",
                 "latency/ttft_ms_p95", "retrieval/recall_all@3", "qa/single-hop/f1", "qa/adversarial/f1"):  # fmt: skip
        assert name in metrics, name
    assert "qa/j" not in metrics and metrics["qa/judge_failures"] == 0  # judge=none: no J, nothing failed
    assert metrics["qa/f1_ci95_low"] <= metrics["qa/f1"] <= metrics["qa/f1_ci95_high"]
    assert (
        metrics["qa/prompt_tokens_mean"] <= 1024
        and metrics["qa/context_tokens_mean"] < metrics["qa/prompt_tokens_mean"]
    )
    for row in rows:
        assert {"question", "gold", "answer", "verdict", "retrieved", "shown_turns"} <= set(row)
        assert len(row["retrieved"]) <= 3 and set(row["shown_turns"]) <= set(row["retrieved"])
    # The overall scores leave the adversarial question out; per_query pairs exactly those questions.
    answerable = [row for row in rows if row["category"] != ADVERSARIAL]
    assert metrics["qa/f1"] == pytest.approx(sum(row["f1"] for row in answerable) / len(answerable))
    assert set(artifacts["per_query"]["qa/f1"]) == {row["question_id"] for row in answerable}
    assert artifacts[qa.SETUP_ARTIFACT]["category_map"]["5"] == ADVERSARIAL
    assert artifacts[qa.SETUP_ARTIFACT]["answer_prompt"]["version"] == "answer_v1"


def test_include_unanswerable_puts_adversarial_questions_into_the_overall():
    metrics, artifacts = run("experiment.include_unanswerable=true", "experiment.context=none")
    rows = artifacts[qa.ANSWERS_ARTIFACT]["questions"]
    assert len(artifacts["per_query"]["qa/f1"]) == len(rows)
    assert metrics["qa/f1"] == pytest.approx(sum(row["f1"] for row in rows) / len(rows))


def test_baselines_show_nothing_the_evidence_or_the_newest_turns():
    none, _ = run("experiment.context=none")
    oracle, oracle_art = run("experiment.context=oracle")
    assert none["qa/evidence_in_context"] == 0 and oracle["qa/evidence_in_context"] == 1
    assert none["qa/context_tokens_mean"] < oracle["qa/context_tokens_mean"]
    for row in oracle_art[qa.ANSWERS_ARTIFACT]["questions"]:
        assert row["shown_turns"] == row["evidence"]  # the gold turns and nothing else
    assert "retrieval/recall_all@3" not in none
    # A full context of 800 tokens cannot hold conv-a: the oldest turns go, every question says so.
    full, full_art = run("experiment.context=full", "experiment.full_context_tokens=800")
    rows = full_art[qa.ANSWERS_ARTIFACT]["questions"]
    assert full["qa/truncated_questions"] == len(rows) == 5
    shown = rows[0]["shown_turns"]
    assert shown and shown[-1] == "D2:3" and "D1:1" not in shown
    whole, _ = run("experiment.context=full")  # the model's own window (2048) holds it all
    assert whole["qa/truncated_questions"] == 0 and whole["qa/evidence_in_context"] == 1


def test_kv_form_gives_the_text_forms_answers_token_for_token():
    text, text_art = run("experiment.context=full", "experiment.max_new_tokens=6")
    kv, kv_art = run("experiment.context=full", "experiment.max_new_tokens=6", "experiment.form=kv")
    answers = [row["answer"] for row in text_art[qa.ANSWERS_ARTIFACT]["questions"]]
    assert answers == [row["answer"] for row in kv_art[qa.ANSWERS_ARTIFACT]["questions"]]
    assert kv["qa/prompt_tokens_mean"] == text["qa/prompt_tokens_mean"]
    assert "latency/kv_build_ms_mean" in kv  # the one cache per conversation, built once


def test_parametric_form_answers_from_an_adapter_with_no_memories_in_the_prompt():
    metrics, artifacts = run("experiment.form=parametric", "parametric.steps=2", "parametric.rank=2",
                             "experiment.context=none")  # fmt: skip
    assert metrics["qa/parametric_train_s"] > 0 and metrics["qa/answer_failures"] == 0
    assert all(row["answer"] is not None for row in artifacts[qa.ANSWERS_ARTIFACT]["questions"])


def test_longmemeval_abstention_is_scored_apart():
    base = ["experiment=qa", "dataset=longmemeval", f"dataset.path={FIXTURES / 'longmemeval_tiny.json'}",
            "model=tiny_llama", "embedder=hashing", "logger=none", "experiment.max_new_tokens=2", "experiment.top_k=2"]  # fmt: skip
    metrics, artifacts = run(base=base)
    categories = {row["category"] for row in artifacts[qa.ANSWERS_ARTIFACT]["questions"]}
    assert UNANSWERABLE in categories and f"qa/{UNANSWERABLE}/f1" in metrics
    assert (
        metrics[f"qa/{UNANSWERABLE}/questions"] + sum(metrics[f"qa/{c}/questions"] for c in categories - {UNANSWERABLE})
        == metrics["qa/questions"]
    )


def test_the_subset_is_seeded_per_conversation_and_category():
    from memos_lab.data.locomo import load_locomo

    [conversation] = load_locomo(str(FIXTURES / "locomo_tiny.json"), limit=1)
    picked = qa.select_questions(conversation, 1, seed=0)
    assert picked == qa.select_questions(conversation, 1, seed=0)
    assert len(picked) == len({q.category for q in conversation.questions})
    assert qa.select_questions(conversation, None, seed=0) == list(conversation.questions)


def test_packing_and_cutting_from_the_oldest_end():
    assert qa.pack([2, 0, 1], cost=[5, 4, 3], budget=8) == [2, 0]  # 3 + 5 fit, then 4 does not
    assert qa.newest_that_fit([5, 4, 3], budget=7) == 1  # 4 + 3 fit, 5 + 4 + 3 does not
    assert qa.newest_that_fit([5, 4, 3], budget=12) == 0


def test_a_failing_answerer_is_a_counted_failure_and_the_run_goes_on(monkeypatch):
    from memos_lab.generation.local import LocalGenerator

    real = LocalGenerator.generate

    def flaky(self, requests, max_new_tokens):
        generations = real(self, requests, max_new_tokens)
        generations[1] = Generation.failure("the answerer fell over", requests[1].request_id)
        return generations

    monkeypatch.setattr(LocalGenerator, "generate", flaky)
    metrics, artifacts = run("experiment.context=none")
    assert metrics["qa/answer_failures"] == 1 and metrics["qa/questions"] == 5
    rows = artifacts[qa.ANSWERS_ARTIFACT]["questions"]
    assert [row["answer_error"] for row in rows].count("the answerer fell over") == 1
    assert rows[1]["answer"] is None and rows[1]["f1"] is None  # counted, not scored


SERVED_JUDGE = ["judge=openai_compatible", "judge.generator.base_url=http://127.0.0.1:9/v1",
                "judge.generator.model=judge-model", "judge.generator.check=false", "judge.generator.timeout_s=1",
                "judge.generator.max_retries=0"]  # fmt: skip


def test_a_dead_judge_is_a_counted_failure_never_right_or_wrong():
    metrics, artifacts = run("experiment.context=none", *SERVED_JUDGE)
    assert metrics["qa/judge_failures"] == 5 and "qa/j" not in metrics
    assert all(row["verdict"] is None for row in artifacts[qa.ANSWERS_ARTIFACT]["questions"])


def test_a_judge_scores_with_the_pinned_prompt(monkeypatch):
    from memos_lab.generation.served import ServedGenerator

    seen = []

    def verdicts(self, requests, max_new_tokens):
        seen.extend(request.messages[-1]["content"] for request in requests)
        return [Generation("CORRECT" if i % 2 == 0 else "WRONG.", prompt_tokens=7) for i in range(len(requests))]

    monkeypatch.setattr(ServedGenerator, "generate", verdicts)
    metrics, artifacts = run("experiment.context=none", "experiment.judge=true", *SERVED_JUDGE)
    assert len(seen) == 5 and all("Reply with one word, CORRECT or WRONG." in p for p in seen)
    assert any("do not contain this information" in p for p in seen)  # the adversarial question's reference
    verdicts = [row["verdict"] for row in artifacts[qa.ANSWERS_ARTIFACT]["questions"] if row["category"] != ADVERSARIAL]
    assert metrics["qa/j"] == pytest.approx(sum(verdicts) / len(verdicts))
    assert metrics["qa/j_ci95_low"] <= metrics["qa/j"] <= metrics["qa/j_ci95_high"]
    assert metrics["qa/judge_prompt_tokens"] == 35
    assert artifacts[qa.SETUP_ARTIFACT]["judge"]["model"] == "judge-model"


@pytest.mark.parametrize("overrides, error, message", [
    (["experiment.judge=true"], ConfigError, "no judge is configured"),
    (["experiment.context_tokens=20"], ConfigError, "smaller than the answer prompt"),
    (["prompt.answer.system=Answer briefly."], ConfigError, "lacks the placeholder {memories}"),
    (['prompt.judge.user="Is {prediction} right?"'], ConfigError, "lacks the placeholder {gold}"),
    (["experiment.context=everything"], ConfigError, "experiment.context: unknown 'everything'"),
])  # fmt: skip
def test_bad_input_is_refused_before_any_model_loads(no_model, overrides, error, message):
    with pytest.raises(error, match=message):
        qa.run(config(*overrides), Tracker())


def test_a_dataset_without_answers_is_refused_before_any_model_loads(no_model, tmp_path):
    records = json.loads((FIXTURES / "locomo_tiny.json").read_text())
    records[0]["qa"][0]["answer"] = " "
    path = tmp_path / "no_answers.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="has no gold answer"):
        qa.run(config(f"dataset.path={path}"), Tracker())
