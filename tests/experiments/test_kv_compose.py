"""experiment=kv_compose end to end on tiny_llama with the hashing embedder and the LoCoMo fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments import kv_compose
from memos_lab.loggers.base import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
QA = [
    "experiment=kv_compose", "dataset=locomo", f"dataset.path={FIXTURES / 'locomo_tiny.json'}", "dataset.limit=1",
    "model=tiny_llama", "embedder=hashing", "logger=none", "experiment.max_new_tokens=4", "experiment.top_k=3",
    "experiment.max_questions=1", "experiment.recompute_fracs=[0,0.5,1.0]",
]  # fmt: skip


class Recorder(Tracker):
    def __init__(self) -> None:
        self.artifacts: dict = {}

    def log_artifact(self, name, data):
        self.artifacts[name] = data


def run(*overrides: str, base: list[str] = QA) -> tuple[dict[str, float], dict]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*base, *overrides])
    tracker = Recorder()
    return kv_compose.run(cfg, tracker), tracker.artifacts


def test_every_strategy_and_fraction_is_measured_against_the_full_prefill() -> None:
    m, artifacts = run()
    labels = [row["label"] for row in artifacts[kv_compose.CONFIGURATIONS_ARTIFACT]["rows"]]
    assert labels == ["text", "exact", "naive", "rerotate", "cacheblend@0", "cacheblend@0.5", "cacheblend@1",
                      "leading@0", "leading@0.5", "leading@1"]  # fmt: skip
    assert m["compose/questions"] >= 3 and m["compose/same_tokens_frac"] == 1.0
    # exact and full recompute are a full prefill: the same next token and the same greedy answers
    for label in ("exact", "cacheblend@1", "leading@1"):
        assert m[f"compose/{label}/top1_agreement"] == 1.0 and m[f"compose/{label}/answer_agreement"] == 1.0
        assert m[f"compose/{label}/kl_bits_max"] < 1e-6
        assert m[f"compose/{label}/f1"] == m["compose/text/f1"]
    assert m["compose/cacheblend@1/prefill_saved_frac"] < m["compose/cacheblend@0.5/prefill_saved_frac"]
    # the header is reused, so even a full recompute of the memories saves a little; with no recompute only
    # the memory message's closing tokens are computed
    no_recompute = m["compose/rerotate/prefill_saved_frac"]
    assert 0.99 < no_recompute < 1 and m["compose/naive/prefill_saved_frac"] == no_recompute
    assert m["compose/cacheblend@0/prefill_saved_frac"] == m["compose/leading@0/prefill_saved_frac"] == no_recompute
    assert m["compose/cacheblend@1/memory_saved_frac"] < m["compose/cacheblend@1/prefill_saved_frac"]
    # random weights still tell a wrong position from a right one
    assert m["compose/naive/kl_bits_mean"] > m["compose/exact/kl_bits_mean"]
    for label in labels[1:]:
        assert m[f"compose/{label}/ttft_ms_p50"] > 0 and m[f"compose/{label}/bytes_copied_mean"] >= 0
        assert m[f"compose/{label}/ttft_speedup"] > 0
    assert m["compose/cache_mb_mean"] > 0


def test_sweep_mode_times_every_variant_against_a_full_prefill() -> None:
    m, _ = run("experiment.mode=sweep", "experiment.memory_tokens=300", "experiment.chunks=4",
               "experiment.repeats=2", "experiment.strategies=[rerotate,cacheblend]", "experiment.recompute_fracs=[0.15]",
               base=["experiment=kv_compose", "model=tiny_llama", "logger=none", "dataset.n_conversations=2"])  # fmt: skip
    assert 300 <= m["compose/context_tokens_mean"] <= 360  # + the memory message's header
    assert m["compose/cacheblend@0.15/prefill_saved_frac"] < m["compose/rerotate/prefill_saved_frac"] < 1
    assert m["compose/text/ttft_ms_p50"] > 0 and m["compose/cacheblend@0.15/ttft_speedup"] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("experiment.strategies=[nosuch]", "nosuch"),
        ("experiment.recompute_fracs=[1.5]", "recompute_fracs"),
        ("experiment.mode=nosuch", "experiment.mode"),
    ],
)
def test_bad_settings_are_refused_before_a_model_loads(override: str, message: str, monkeypatch) -> None:
    monkeypatch.setattr("memos_lab.models.llm.build_tiny_llama", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match=message):
        run(override)
