"""Conversation-level cross-validation of retrieval settings: no leakage, honest errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR
from memos_lab.errors import ConfigError
from memos_lab.experiments import retrieval
from memos_lab.experiments.retrieval import Evaluation, cross_validate
from memos_lab.loggers.base import Tracker

LOCOMO = Path(__file__).parents[1] / "data" / "fixtures" / "locomo_tiny.json"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=["embedder=hashing", "logger=none", "dataset=locomo", f"dataset.path={LOCOMO}", *overrides],
        )


def evaluation(scores: list[float]) -> Evaluation:
    ids = [f"q{i}" for i in range(len(scores))]
    return Evaluation(ids, {"recall_all@10": np.array(scores, dtype=float)}, {}, {}, {})


def test_the_held_out_fold_never_influences_its_choice():
    fold_of = {"q0": 0, "q1": 0, "q2": 1, "q3": 1}
    a = evaluation([1, 1, 0, 0])  # best on fold 0
    b = evaluation([0, 0, 1, 1])  # best on fold 1
    result = cross_validate([a, b], fold_of, 2, "recall_all@10")
    # fold 0 is scored with what fold 1 prefers (b) and vice versa: both score 0 held out.
    assert result.choices == [1, 0] and result.fold_scores == [0.0, 0.0]
    # Changing only fold 0's own scores changes nothing about fold 0's choice.
    for fold0_a, fold0_b in [([0, 0], [1, 1]), ([9, 9], [0, 0]), ([1, 0], [0, 1])]:
        changed = [evaluation([*fold0_a, 0, 0]), evaluation([*fold0_b, 1, 1])]
        assert cross_validate(changed, fold_of, 2, "recall_all@10").choices[0] == 1


def test_ties_go_to_the_first_candidate_of_the_grid():
    fold_of = {"q0": 0, "q1": 1}
    result = cross_validate([evaluation([1, 1]), evaluation([1, 1])], fold_of, 2, "recall_all@10")
    assert result.choices == [0, 0] and result.fold_scores == [1.0, 1.0]


def test_without_a_grid_the_config_is_scored_fold_by_fold(tmp_path):
    metrics = retrieval.run(composed(f"paths.cache_dir={tmp_path}", "experiment.folds=2"), Tracker())
    assert metrics["retrieval/cv/candidates"] == 1
    folds = [metrics["retrieval/cv/fold0/recall_all@10"], metrics["retrieval/cv/fold1/recall_all@10"]]
    assert metrics["retrieval/cv/recall_all@10"] == pytest.approx(sum(folds) / 2)


def test_cross_validation_on_the_tiny_dataset(tmp_path):
    cfg = composed(f"paths.cache_dir={tmp_path}", "experiment.folds=2", 'experiment.grid=["reader.context_turns=0,1"]')
    metrics = retrieval.run(cfg, Tracker())
    assert metrics["retrieval/cv/folds"] == 2 and metrics["retrieval/cv/candidates"] == 2
    assert 0 <= metrics["retrieval/cv/recall_all@10"] <= 1
    assert {metrics["retrieval/cv/fold0/choice"], metrics["retrieval/cv/fold1/choice"]} <= {0, 1}
    assert "retrieval/cv/multi-hop/recall_all@10" in metrics and "retrieval/recall_all@10" in metrics
    assert {"retrieval/cv/candidate0/recall_all@10", "retrieval/cv/candidate1/recall_all@10"} <= set(metrics)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment.folds=3", 'experiment.grid=["reader.context_turns=0,1"]'], "2 to 2"),  # 2 conversations
        (["experiment.folds=1", 'experiment.grid=["reader.context_turns=0,1"]'], "2 to 2"),
        (["experiment.folds=2", 'experiment.grid=["memory.no_such=1,2"]'], "no_such"),
        (["experiment.folds=2", 'experiment.grid=["memory.diversity=0,2.0"]'], "diversity"),  # refused up front
    ],
)
def test_bad_cross_validation_settings_are_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        retrieval.run(composed(f"paths.cache_dir={tmp_path}", *overrides), Tracker())
