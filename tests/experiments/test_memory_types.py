"""The memory-type comparison on tiny_llama: every form reports the same metrics; kv matches text."""

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments import memory_types
from memos_lab.loggers.base import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "experiment=memory_types",
                "dataset=synthetic_facts",
                "model=tiny_llama",
                "logger=none",
                "experiment.n_facts=4",
                "parametric.steps=2",
                "parametric.layers=null",
                *overrides,
            ],
        )


@pytest.mark.parametrize("form", ["text", "kv", "lora"])
def test_every_form_reports_accuracy_latency_storage_and_costs(form):
    metrics = memory_types.run(config(f"experiment.memory={form}"), Tracker())
    for name in ("accuracy", "generalization", "ttft_ms_p50", "storage_bytes", "write_s", "update_s"):
        assert f"memtypes/{name}" in metrics, name
    assert metrics["memtypes/storage_bytes"] > 0
    if form == "kv":
        assert metrics["memtypes/text_match_frac"] == 1.0  # the same computation, the same tokens
        assert metrics["memtypes/storage_bytes"] > metrics["memtypes/context_tokens"]  # KV states >> text
    if form == "lora":  # nothing in the context
        assert metrics["memtypes/prompt_tokens_mean"] < metrics["memtypes/context_tokens"]


def test_bad_input():
    with pytest.raises(ConfigError, match="experiment.memory: unknown .dna.; valid: text, kv, lora"):
        memory_types.run(config("experiment.memory=dna"), Tracker())
    with pytest.raises(ConfigError, match="needs a knowledge-update dataset"):
        memory_types.run(config("dataset=synthetic_dialogues"), Tracker())
