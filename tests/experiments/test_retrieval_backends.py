"""The retrieval and scaling experiments run on every backend (hashing embedder, tiny inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR, config_groups
from memos_lab.experiments import retrieval, scaling
from memos_lab.loggers.base import Tracker

LOCOMO = Path(__file__).parents[1] / "data" / "fixtures" / "locomo_tiny.json"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["embedder=hashing", "logger=none", *overrides])


@pytest.mark.parametrize("memory", config_groups()["memory"])
def test_retrieval_on_locomo_format_with_every_backend(memory, tmp_path):
    cfg = composed(f"memory={memory}", "dataset=locomo", f"dataset.path={LOCOMO}", f"paths.cache_dir={tmp_path}",
                   "reader.context_turns=1", "reader.date_in_key=true")  # fmt: skip
    metrics = retrieval.run(cfg, Tracker())
    assert metrics["retrieval/questions"] == 5 and metrics["retrieval/questions_skipped"] == 1  # adversarial
    assert metrics["retrieval/multi-hop/questions"] == 1 and "retrieval/adversarial/questions" not in metrics
    assert metrics["retrieval/recall_all@10"] == 1.0  # 8 turns, top 10: everything is found
    assert metrics["retrieval/recall_all@1"] < 1.0  # but the multi-hop question needs two turns
    assert metrics["retrieval/index_mb"] > 0


@pytest.mark.parametrize("memory", ["vector", "graph"])
def test_scaling_reports_latency_memory_and_ingest(memory):
    cfg = composed("experiment=scaling", f"memory={memory}", "experiment.size=300", "experiment.queries=20",
                   "experiment.ingest_sample=50", "experiment.batch_size=128")  # fmt: skip
    metrics = scaling.run(cfg, Tracker())
    assert metrics["scaling/items"] == 300
    assert 0 < metrics["scaling/search_ms_p50"] <= metrics["scaling/search_ms_p95"]
    assert metrics["scaling/index_mb"] > 300 * 512 * 4 / 1e6  # at least the vectors
    assert metrics["scaling/ingest_items_per_s"] > 0 and metrics["scaling/build_items_per_s"] > 0
