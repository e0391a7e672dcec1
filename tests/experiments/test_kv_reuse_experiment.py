"""The kv_reuse experiment end to end on the tiny Llama (both modes)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments import kv_reuse
from memos_lab.loggers.base import Tracker

SMALL = [
    "experiment=kv_reuse", "model=tiny_llama", "logger=none", "dataset.n_conversations=2",
    "experiment.dialogues=1", "experiment.turns=3", "experiment.memory_tokens=200", "experiment.repeats=1",
    "experiment.max_new_tokens=4",
]  # fmt: skip


def run(*overrides: str) -> dict[str, float]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    return kv_reuse.run(cfg, Tracker())


def test_dialogue_mode_is_exact_and_saves_what_a_perfect_prefix_cache_saves() -> None:
    m = run()
    assert m["kv/saved_frac"] == pytest.approx(m["kv/theoretical_saved_frac"], abs=1e-12)
    assert 0.5 < m["kv/saved_frac"] < 1
    assert m["kv/prefill_tokens_reuse"] == pytest.approx(m["kv/prefill_tokens_full"] * (1 - m["kv/saved_frac"]))
    assert 0 < m["kv/flops_saved_frac"] < 1
    assert m["kv/max_logit_diff"] <= 1e-5 and m["kv/greedy_match_frac"] == 1.0
    assert m["kv/compose/exact_max_logit_diff"] <= 1e-5
    assert m["kv/compose/rerotate_max_logit_diff"] > m["kv/compose/exact_max_logit_diff"]
    # tiny Llama: 2 layers x (k, v) x 2 kv heads x 16 dims x 4 bytes = 512 bytes per token
    assert m["kv/cache_kib_per_token"] == pytest.approx(0.5)
    assert m["kv/turns"] == 3


def test_sweep_mode_reports_the_requested_lengths() -> None:
    m = run("experiment.mode=sweep", "experiment.memory_tokens=300", "experiment.question_tokens=20")
    assert 300 <= m["kv/memory_tokens"] <= 340  # + the system message's template tokens
    assert 20 < m["kv/question_tokens"] <= 45  # + the user and assistant template tokens
    assert m["kv/saved_frac"] == pytest.approx(
        m["kv/memory_tokens"] / (m["kv/memory_tokens"] + m["kv/question_tokens"])
    )
    assert m["kv/max_logit_diff"] <= 1e-5


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="experiment.mode"):
        run("experiment.mode=nope")
    with pytest.raises(ConfigError, match="experiment.turns"):
        run("experiment.turns=0")
