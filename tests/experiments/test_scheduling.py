"""The scheduling experiment end to end on tiny_llama with the hashing embedder."""

import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.chat import MemChat
from memos_lab.cli import CONF_DIR
from memos_lab.data.synthetic import generate_dialogues
from memos_lab.experiments import scheduling
from memos_lab.loggers.base import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = [
    "experiment=scheduling", "model=tiny_llama", "embedder=hashing", "logger=none",
    "dataset.n_conversations=1", "dataset.n_sessions=3", "experiment.working_memory.max_items=4",
    "experiment.max_new_tokens=2", "experiment.top_k=2",
]  # fmt: skip


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*SMALL, *overrides])


def test_questions_are_asked_after_their_evidence():
    [conversation] = generate_dialogues(seed=0, n_conversations=1)
    slots = scheduling.question_slots(conversation)
    session_of = {t.turn_id: s for s, session in enumerate(conversation.sessions) for t in session.turns}
    asked = [q for questions in slots.values() for q in questions]
    assert sorted(q.question_id for q in asked) == sorted(q.question_id for q in conversation.questions)
    for slot, questions in slots.items():
        for question in questions:
            assert all(session_of[turn_id] <= slot for turn_id in question.evidence)
            if question.evidence:
                assert max(session_of[turn_id] for turn_id in question.evidence) == slot


def test_text_mode_run_reports_every_metric():
    metrics = scheduling.run(config(), Tracker())
    for name in ("sched/working_hit_rate", "qa/f1", "qa/em", "latency/answer_ms_p50", "latency/answer_ms_p95",
                 "qa/context_tokens_mean"):  # fmt: skip
        assert name in metrics, name
    assert 0 <= metrics["sched/working_hit_rate"] <= metrics["sched/working_hit_rate_any"] <= 1
    assert metrics["sched/working_items_mean"] <= 4
    assert metrics["qa/questions"] > 0 and metrics["run/interrupted"] == 0.0
    assert "qa/judge" not in metrics  # judge=none by default


def test_a_working_memory_that_holds_everything_always_hits():
    metrics = scheduling.run(config("experiment.answer=false", "experiment.working_memory.max_items=1000"), Tracker())
    assert metrics["sched/working_hit_rate"] == 1.0
    assert "qa/f1" not in metrics  # nothing was answered


def test_a_dead_judge_is_a_counted_failure_per_question():
    # check=false: the judge's server dies after the start (a dead one at the start is a ConfigError)
    cfg = config("judge=openai_compatible", "judge.generator.base_url=http://127.0.0.1:9/v1", "judge.generator.model=none",
                 "judge.generator.timeout_s=1", "judge.generator.max_retries=0", "judge.generator.check=false")  # fmt: skip
    metrics = scheduling.run(cfg, Tracker())
    assert metrics["qa/judge_failures"] == metrics["qa/questions"] > 0
    assert "qa/judge" not in metrics and "qa/f1" in metrics


def test_an_interrupted_run_returns_what_it_measured(monkeypatch):
    real_ask, calls = MemChat.ask, []

    def ask_then_interrupt(self, question):
        calls.append(question)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_ask(self, question)

    monkeypatch.setattr(MemChat, "ask", ask_then_interrupt)
    metrics = scheduling.run(config(), Tracker())
    assert metrics["run/interrupted"] == 1.0 and metrics["qa/questions"] == 3
    assert "qa/f1" in metrics


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiment.working_memory.max_items=0", "max_items must be"),
        ("experiment.top_k=-1", "top_k must be"),
        ("experiment.mode=telepathy", "experiment.mode: unknown 'telepathy'; valid: text, kv, parametric"),
        ("experiment.compare_text=true", "compare_text compares kv mode with the text form; mode is 'text'"),
        ("experiment.max_questions=0", "max_questions must be"),
        ("experiment.activation.encode_on_write=true", "encode_on_write caches KV for kv mode; mode is 'text'"),
    ],
)
def test_bad_settings_fail_clearly(override, message):
    from memos_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        scheduling.run(config(override), Tracker())


def test_kv_mode_reports_cache_hits_and_prefill_savings():
    exact = scheduling.run(config("experiment.mode=kv", "experiment.activation.max_mb=1"), Tracker())
    assert 0 <= exact["sched/kv_hit_rate"] <= 1
    assert 0 < exact["sched/prefill_saved_frac"] < 1  # the question part is always prefilled
    # composing from per-memory caches recomputes less of the working memory than exact prefix reuse
    blend = scheduling.run(config("experiment.mode=kv", "compose=cacheblend", "compose.recompute_frac=0.1"), Tracker())
    assert 0 < blend["sched/kv_recomputed_frac"] < exact["sched/kv_recomputed_frac"]
    assert blend["sched/kv_bytes_copied_mean"] > 0


def test_parametric_mode_consolidates_well_used_memories():
    cfg = config("experiment.mode=parametric", "experiment.consolidation.min_uses=2", "experiment.consolidation.min_age=0",
                 "experiment.consolidation.max_items=2", "parametric.steps=2", "parametric.rank=2")  # fmt: skip
    metrics = scheduling.run(cfg, Tracker())
    assert metrics["sched/consolidated_items"] > 0 and metrics["sched/consolidation_s"] > 0
    assert metrics["sched/prefill_saved_frac"] == 0.0 and "qa/f1" in metrics


@pytest.mark.skipif(importlib.util.find_spec("mem0") is None, reason='the peers extra: pip install -e ".[peers]"')
def test_the_scheduling_loop_runs_on_mem0(tmp_path):
    # Another memory system behind the textual interface: the same loop, the same metrics as our backends.
    metrics = scheduling.run(config("memory=mem0", f"memory.home={tmp_path}"), Tracker())
    assert metrics["qa/questions"] > 0 and 0 <= metrics["sched/working_hit_rate"] <= 1
    assert metrics["sched/working_items_mean"] <= 4


def test_kv_mode_measures_agreement_with_the_text_form_on_the_same_turns():
    # exact composition is the text form's computation: every answer agrees, token for token
    exact = scheduling.run(config("experiment.mode=kv", "experiment.compare_text=true"), Tracker())
    assert exact["sched/first_token_agreement"] == exact["sched/answer_agreement"] == 1.0
    assert exact["latency/text_ttft_ms_p50"] > 0 and exact["sched/ttft_speedup"] > 0
    # (that a composition which changes the answers is caught is tested on a model that heeds its prompt, in
    # tests/test_chat.py: this tiny_llama repeats its last input token whatever the cache holds)
    naive = scheduling.run(config("experiment.mode=kv", "experiment.compare_text=true", "compose=naive"), Tracker())
    assert 0 <= naive["sched/answer_agreement"] <= naive["sched/first_token_agreement"] <= 1.0
    assert naive["sched/kv_recomputed_frac"] < exact["sched/kv_recomputed_frac"]  # only the message end
    assert 0 < naive["sched/kv_encoded_frac"] <= 1
    # chunks encoded as memories are written: none left to encode at question time, the work counted apart
    written = scheduling.run(
        config("experiment.mode=kv", "compose=naive", "experiment.activation.encode_on_write=true"), Tracker()
    )
    assert written["sched/kv_encoded_frac"] == 0 and written["sched/kv_write_encoded_tokens"] > 0
    assert written["sched/prefill_saved_frac"] > naive["sched/prefill_saved_frac"]
    assert written["sched/compute_saved_with_writes_frac"] < written["sched/prefill_saved_frac"]
    assert naive["sched/kv_write_encoded_tokens"] == 0


def test_max_questions_keeps_evenly_spaced_questions():
    [conversation] = generate_dialogues(seed=0, n_conversations=1)
    slots = scheduling.question_slots(conversation)
    ordered = [q.question_id for slot in sorted(slots) for q in slots[slot]]
    kept = scheduling.spaced(slots, 3)
    assert [q.question_id for slot in sorted(kept) for q in kept[slot]] == [
        ordered[0], ordered[round((len(ordered) - 1) / 2)], ordered[-1]
    ]  # fmt: skip
    assert scheduling.spaced(slots, None) == slots
    metrics = scheduling.run(config("experiment.max_questions=2"), Tracker())
    assert metrics["qa/questions"] == 2
