"""experiment=lora_update on the tiny Llama: every metric is written, and the numbers mean what they say."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments.lora_update import run
from memos_lab.loggers.base import Tracker

TINY = [
    "experiment=lora_update",
    "dataset=synthetic_facts",
    "dataset.n_edits=6",
    "model=tiny_llama",
    "embedder=hashing",
    "logger=none",
    "parametric.lr=1e-2",
    "parametric.batch_size=6",
    "parametric.layers=null",
    "parametric.layer_span=null",
    "parametric.target_prob=0.0",
]  # a random tiny model's outputs stay flat


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def test_sequential_gated_editing_writes_every_metric():
    metrics = run(
        compose_run(
            "parametric=gated_lora", "parametric.gate.threshold=0.3", "experiment.n_batches=2", "parametric.replay=3"
        ),
        Tracker(),
    )
    for name in (
        "reliability",
        "generalization",
        "locality",
        "portability",
        "reliability_prob",
        "generalization_prob",
        "reliability_token",
        "generalization_token",
        "locality_token",
        "retention",
        "train_s",
        "adapter_mb",
    ):
        assert f"lora/{name}" in metrics, name
    assert metrics["lora/reliability"] == 1.0 and metrics["lora/retention"] == 1.0  # learned, and kept
    assert metrics["lora/base_reliability"] == 0.0  # the random model knew none of it
    # the hashing gate keeps the locality probes (no subject words) on the base model: unchanged by definition
    assert metrics["lora/gate_locality_prompts"] == 0.0 and metrics["lora/locality"] == 1.0
    assert metrics["lora/reliability_token"] == 1.0 and metrics["lora/locality_token"] == 1.0
    assert metrics["lora/batches"] == 2 and metrics["lora/adapter_mb"] > 0


def test_ungated_lora_changes_the_unrelated_answers_of_a_tiny_model():
    metrics = run(compose_run("parametric=lora_ftm"), Tracker())
    assert metrics["lora/reliability"] == 1.0
    assert metrics["lora/gate_locality_prompts"] == 1.0 and metrics["lora/locality"] < 1.0
    assert metrics["lora/reliability_token"] == 1.0 and metrics["lora/locality_token"] < 1.0
    assert "lora/retention" not in metrics


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONF_DIR / "parametric").glob("*.yaml")))
def test_every_method_config_builds_on_a_model_of_any_depth(method):
    from hydra.utils import instantiate

    from memos_lab.models.llm import build_tiny_llama

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=lora_update", "embedder=hashing", f"parametric={method}"])
    lm = build_tiny_llama(seed=0)
    memory = instantiate(cfg.parametric, _partial_=True)(model=lm)
    try:
        layers = memory.settings.layers
        assert layers is None or (layers and set(layers) <= set(range(lm.model.config.num_hidden_layers)))
    finally:
        memory.close()


def test_more_batches_than_edits_is_a_config_error():
    with pytest.raises(ConfigError, match="n_batches"):
        run(compose_run("experiment.n_batches=7"), Tracker())


def test_one_edit_per_subject_skips_the_contradicting_rewordings_and_counts_them():
    from memos_lab.data.schema import KnowledgeEdit
    from memos_lab.experiments.lora_update import _choose_edits

    records = [
        KnowledgeEdit("a", "M247 Sergeant York", "designer", "Who designed M247 Sergeant York?", "Northrop"),
        KnowledgeEdit("b", " m247  sergeant york", "designer", "Who worked on m247 sergeant york?", "JM Webb"),
        KnowledgeEdit("c", "Arize", "river", "What does Arize flow into?", "Scheldt"),
        KnowledgeEdit("d", "Lazlo Voss", "city", "Lazlo Voss lives in", "Lima"),
    ]
    chosen, skipped = _choose_edits(records, 2, "first")
    assert [e.edit_id for e in chosen] == ["a", "c"] and skipped == 1
    chosen, skipped = _choose_edits(records, None, "first")
    assert [e.edit_id for e in chosen] == ["a", "c", "d"] and skipped == 1
    chosen, skipped = _choose_edits(records, 2, "keep")
    assert [e.edit_id for e in chosen] == ["a", "b"] and skipped == 0


def test_an_unknown_repeated_subjects_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="repeated_subjects"):
        run(compose_run("parametric=lora_ftm", "experiment.repeated_subjects=last"), Tracker())
