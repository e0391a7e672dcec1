"""Retrieval experiment: ingest every turn, ask every answerable question, score turn-level evidence."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import hydra.utils
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.data.schema import Conversation
from memos_lab.eval.retrieval import latency_percentiles, mean_metrics, per_query_metrics
from memos_lab.experiments.common import ExperimentSettings, load_records
from memos_lab.loggers.base import Tracker
from memos_lab.mos import MOS, CubeHit
from memos_lab.runner import PER_QUERY_ARTIFACT
from memos_lab.settings import positive_int, uses_settings

PREFIX = "retrieval/"


@dataclass(frozen=True)
class RetrievalSettings(ExperimentSettings):
    top_k: int = 10  # memories retrieved per question
    cutoffs: tuple[int, ...] = (1, 5, 10)  # the k of recall@k

    def validate(self) -> None:
        positive_int(self, "top_k")


@uses_settings(RetrievalSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    conversations = load_records(cfg, Conversation)
    embedder = hydra.utils.instantiate(cfg.embedder)
    mos = MOS(textual_memory_factory=lambda: hydra.utils.instantiate(cfg.memory, embedder=embedder))
    reader = hydra.utils.instantiate(cfg.reader)
    exp = RetrievalSettings.from_mapping(cfg.experiment)
    top_k = exp.top_k
    index_bytes = 0

    qrels: dict[str, list[str]] = {}
    run_scores: dict[str, dict[str, float]] = {}
    category_of: dict[str, str] = {}
    search_ms: list[float] = []
    ingest_s = 0.0
    items_stored = 0
    skipped = 0
    for step, conversation in enumerate(tqdm(conversations, desc="conversations", unit="conv")):
        user = conversation.conversation_id
        mos.register_user(user)
        cube = mos.create_cube(user, cube_id=conversation.conversation_id)
        items = reader.read(conversation, user)
        started = time.perf_counter()
        mos.add(user, cube.cube_id, items)
        ingest_s += time.perf_counter() - started
        items_stored += len(items)
        turn_ids = {turn.turn_id for turn in conversation.turns}
        for question in conversation.questions:
            evidence = [turn_id for turn_id in question.evidence if turn_id in turn_ids]
            if not question.answerable or not evidence:
                skipped += 1  # nothing to retrieve: unanswerable, adversarial, or evidence missing
                continue
            started = time.perf_counter()
            hits = mos.search(user, question.question, top_k=top_k, cube_ids=[cube.cube_id])
            search_ms.append((time.perf_counter() - started) * 1000)
            qrels[question.question_id] = evidence
            run_scores[question.question_id] = turn_scores(hits)
            category_of[question.question_id] = question.category
        index_bytes += cube.text.index_nbytes()
        tracker.log({"ingest/items": items_stored, "ingest/questions": len(qrels)}, step=step)

    per_query = per_query_metrics(qrels, run_scores, cutoffs=exp.cutoffs)
    metrics = mean_metrics(per_query, PREFIX)
    query_ids = sorted(qrels)
    # Per-query scores let the report test differences between configurations for significance.
    tracker.log_artifact(
        PER_QUERY_ARTIFACT, {f"{PREFIX}{name}": dict(zip(query_ids, values.tolist())) for name, values in per_query.items()}
    )
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, query_id in enumerate(query_ids):
        by_category[category_of[query_id]].append(index)
    rows = []
    for category, indices in sorted(by_category.items()):
        for name, values in per_query.items():
            if name.startswith("recall"):
                metrics[f"{PREFIX}{category}/{name}"] = float(np.mean(values[indices]))
        metrics[f"{PREFIX}{category}/questions"] = len(indices)
        rows.append([category, len(indices)] + [float(np.mean(per_query[f"recall_all@{k}"][indices])) for k in exp.cutoffs])
    tracker.log_table("retrieval/by_category", ["category", "questions"] + [f"recall_all@{k}" for k in exp.cutoffs], rows)
    metrics.update(latency_percentiles(search_ms, f"{PREFIX}search_ms"))
    metrics[f"{PREFIX}ingest_items_per_s"] = items_stored / ingest_s if ingest_s else 0.0
    metrics[f"{PREFIX}questions"] = len(qrels)
    metrics[f"{PREFIX}questions_skipped"] = skipped
    metrics[f"{PREFIX}items"] = items_stored
    metrics[f"{PREFIX}index_mb"] = index_bytes / 2**20  # all conversations' indexes together
    return metrics


def turn_scores(hits: list[CubeHit]) -> dict[str, float]:
    """Evidence turn id -> score of the best hit holding it (a `fine` fact may stand for several turns)."""
    scores: dict[str, float] = {}
    for hit in hits:
        extra = hit.item.metadata.extra
        turn_ids = [extra["turn_id"]] if "turn_id" in extra else extra.get("source_turns", "").split(";")
        for turn_id in filter(None, turn_ids):
            scores.setdefault(turn_id, hit.score)
    return scores
