"""Retrieval experiment: ingest every turn, ask every answerable question, score turn-level evidence.

With `experiment.folds=K` it also measures how well settings chosen on some conversations carry over to
others: the conversations are split into K folds, each fold's setting is chosen from `experiment.grid` on
the other folds' questions only, and the held-out fold is scored with it (`retrieval/cv/...`).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import hydra.utils
import numpy as np
from omegaconf import DictConfig, OmegaConf

from memos_lab.data.schema import Conversation
from memos_lab.errors import ConfigError
from memos_lab.eval.retrieval import latency_percentiles, mean_metrics, per_query_metrics, session_recall
from memos_lab.experiments.common import PER_QUERY_ARTIFACT, ExperimentSettings, build_mos, load_records
from memos_lab.loggers.base import Tracker
from memos_lab.mos import CubeHit
from memos_lab.settings import positive_int, uses_settings

PREFIX = "retrieval/"
CV_PREFIX = "retrieval/cv/"
_MISSING = object()


@dataclass
class Evaluation:
    """Per-question scores of one configuration over all conversations, and what it cost."""

    query_ids: list[str]  # sorted; rows of every array in `per_query`
    per_query: dict[str, np.ndarray]
    category_of: dict[str, str]
    category_id_of: dict[str, int | None]
    conversation_of: dict[str, str]
    search_ms: list[float] = field(default_factory=list)
    ingest_s: float = 0.0
    items: int = 0
    skipped: int = 0
    index_bytes: int = 0


@dataclass(frozen=True)
class CrossValidation:
    choices: list[int]  # per fold: the index of the candidate chosen on the other folds
    fold_scores: list[float]  # per fold: the selection metric on the held-out fold, with its choice
    held_out: dict[str, np.ndarray]  # per metric: each question's score under its fold's choice (query_ids order)


@dataclass(frozen=True)
class RetrievalSettings(ExperimentSettings):
    top_k: int = 10  # memories retrieved per question
    cutoffs: tuple[int, ...] = (1, 5, 10)  # the k of recall@k
    folds: int = 0  # >1: conversation-level cross-validation over `grid`
    select_by: str = "recall_all@10"  # the metric the cross-validation selects settings by
    grid: tuple[str, ...] = ()  # "setting=v1,v2" strings as in a sweep; every combination is a candidate

    def validate(self) -> None:
        positive_int(self, "top_k")


@uses_settings(RetrievalSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    conversations = load_records(cfg, Conversation)
    folds = int(cfg.experiment.get("folds") or 0)
    candidates = grid_candidates(cfg, folds, len(conversations))
    plain = evaluate(cfg, conversations, tracker)
    metrics = summarise(plain, PREFIX, tuple(cfg.experiment.cutoffs))
    per_query_log = {
        f"{PREFIX}{name}": dict(zip(plain.query_ids, values.tolist(), strict=True))
        for name, values in plain.per_query.items()
    }
    _log_categories(tracker, "retrieval/by_category", plain, tuple(cfg.experiment.cutoffs))
    if folds:
        metric = str(cfg.experiment.select_by)
        if metric not in plain.per_query:
            raise ConfigError(f"experiment.select_by: unknown metric {metric!r}; valid: {sorted(plain.per_query)}")
        evaluations = [plain if _is_current(cfg, candidate) else evaluate(_with(cfg, candidate), conversations)
                       for candidate in candidates]  # fmt: skip
        fold_of = {qid: fold_of_conversation(conversations, folds)[conv] for qid, conv in plain.conversation_of.items()}
        result = cross_validate(evaluations, fold_of, folds, metric)
        metrics.update(_cv_metrics(result, evaluations, candidates, metric, tracker))
        per_query_log.update({f"{CV_PREFIX}{name}": dict(zip(plain.query_ids, values.tolist(), strict=True))
                              for name, values in result.held_out.items()})  # fmt: skip
    # Per-query scores let the report test differences between configurations for significance.
    tracker.log_artifact(PER_QUERY_ARTIFACT, per_query_log)
    return metrics


# ---- one configuration ----------------------------------------------------------------------------


def evaluate(cfg: DictConfig, conversations: Sequence[Conversation], tracker: Tracker | None = None) -> Evaluation:
    """Ingest each conversation into its own cube and search it with every answerable question."""
    embedder = hydra.utils.instantiate(cfg.embedder)
    mos = build_mos(cfg, embedder)
    reader = hydra.utils.instantiate(cfg.reader)
    top_k = int(cfg.experiment.top_k)
    qrels: dict[str, list[str]] = {}
    run_scores: dict[str, dict[str, float]] = {}
    session_of: dict[str, str] = {}
    result = Evaluation([], {}, {}, {}, {})
    for step, conversation in enumerate(conversations):
        user = conversation.conversation_id
        mos.register_user(user)
        cube = mos.create_cube(user, cube_id=conversation.conversation_id)
        if not mos.describe(user, cube.cube_id).returns_stored_items:
            raise ConfigError(
                "experiment=retrieval scores the evidence turns a memory returns, and this memory returns memories "
                "of its own (memory.infer=true): use experiment=qa for its answer-level scores"
            )
        items = reader.read(conversation, user)
        started = time.perf_counter()
        mos.add(user, cube.cube_id, items)
        result.ingest_s += time.perf_counter() - started
        result.items += len(items)
        turn_sessions = {turn.turn_id: turn.session_id for turn in conversation.turns}
        for question in conversation.questions:
            evidence = [turn_id for turn_id in question.evidence if turn_id in turn_sessions]
            if not question.answerable or not evidence:
                result.skipped += 1  # nothing to retrieve: unanswerable, adversarial, or evidence missing
                continue
            started = time.perf_counter()
            hits = mos.search(user, question.question, top_k=top_k, cube_ids=[cube.cube_id])
            result.search_ms.append((time.perf_counter() - started) * 1000)
            qid = question.question_id
            qrels[qid] = evidence
            run_scores[qid] = turn_scores(hits)
            result.category_of[qid] = question.category
            result.category_id_of[qid] = question.category_id
            result.conversation_of[qid] = conversation.conversation_id
            # Turn ids repeat across conversations ("D1:3"); a question only ever sees its own conversation's.
            session_of.update({f"{qid}|{turn}": session for turn, session in turn_sessions.items()})
        result.index_bytes += mos.describe(user, cube.cube_id).index_bytes
        if tracker is not None:
            tracker.log({"ingest/items": result.items, "ingest/questions": len(qrels)}, step=step)
    cutoffs = tuple(cfg.experiment.cutoffs)
    result.query_ids = sorted(qrels)
    result.per_query = per_query_metrics(qrels, run_scores, cutoffs=cutoffs)
    result.per_query.update(session_recall(
        {qid: [f"{qid}|{turn}" for turn in turns] for qid, turns in qrels.items()},
        {qid: {f"{qid}|{turn}": score for turn, score in scores.items()} for qid, scores in run_scores.items()},
        session_of, cutoffs,
    ))  # fmt: skip
    return result


def summarise(evaluation: Evaluation, prefix: str, cutoffs: Sequence[int]) -> dict[str, float]:
    metrics = mean_metrics(evaluation.per_query, prefix)
    metrics.update(_category_means(evaluation.per_query, evaluation, prefix))
    metrics.update(latency_percentiles(evaluation.search_ms, f"{prefix}search_ms"))
    metrics[f"{prefix}ingest_items_per_s"] = evaluation.items / evaluation.ingest_s if evaluation.ingest_s else 0.0
    metrics[f"{prefix}questions"] = len(evaluation.query_ids)
    metrics[f"{prefix}questions_skipped"] = evaluation.skipped
    metrics[f"{prefix}items"] = evaluation.items
    metrics[f"{prefix}index_mb"] = evaluation.index_bytes / 1e6  # all conversations' indexes together
    return metrics


def _category_rows(evaluation: Evaluation) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for row, qid in enumerate(evaluation.query_ids):
        rows[evaluation.category_of[qid]].append(row)
    return dict(sorted(rows.items()))


def _category_means(per_query: Mapping[str, np.ndarray], evaluation: Evaluation, prefix: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for category, rows in _category_rows(evaluation).items():
        for name, values in per_query.items():
            if "recall" in name:
                metrics[f"{prefix}{category}/{name}"] = float(np.mean(values[rows]))
        metrics[f"{prefix}{category}/questions"] = len(rows)
    return metrics


def _log_categories(tracker: Tracker, name: str, evaluation: Evaluation, cutoffs: Sequence[int]) -> None:
    columns = ["id", "category", "questions"] + [f"recall_all@{k}" for k in cutoffs] + [f"recall@{k}" for k in cutoffs]
    rows = []
    for category, indices in _category_rows(evaluation).items():
        source_id = evaluation.category_id_of[evaluation.query_ids[indices[0]]]
        rows.append([source_id, category, len(indices)]
                    + [float(np.mean(evaluation.per_query[c][indices])) for c in columns[3:]])  # fmt: skip
    tracker.log_table(name, columns, rows)


def turn_scores(hits: list[CubeHit]) -> dict[str, float]:
    """Evidence turn id -> score of the best hit holding it (a `fine` fact may stand for several turns)."""
    scores: dict[str, float] = {}
    for hit in hits:
        extra = hit.item.metadata.extra
        turn_ids = [extra["turn_id"]] if "turn_id" in extra else extra.get("source_turns", "").split(";")
        for turn_id in filter(None, turn_ids):
            scores.setdefault(turn_id, hit.score)
    return scores


# ---- cross-validation over conversations ----------------------------------------------------------


def grid_candidates(cfg: DictConfig, folds: int, conversations: int) -> list[dict[str, object]]:
    """The settings `experiment.grid` declares ("key=v1,v2" strings, as in a sweep), one dict per
    combination, checked before anything runs; an empty grid is the config as given alone."""
    if folds == 0:
        return []
    if folds < 2 or folds > conversations:
        raise ConfigError(
            f"experiment.folds={folds}: needs 2 to {conversations} (the dataset's conversations), or 0 for none"
        )
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grid = list(cfg.experiment.get("grid") or [])
    if not grid:
        return [{}]  # the config as given, scored fold by fold
    axes: list[tuple[str, list[object]]] = []
    for override in OverridesParser.create().parse_overrides(grid):
        key = override.key_or_group
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING or isinstance(
            OmegaConf.select(cfg, key), DictConfig
        ):
            raise ConfigError(f"experiment.grid: {key!r} is not a setting of this config (a config group like "
                              "memory= needs one job per choice)")  # fmt: skip
        values: list[object] = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        axes.append((key, values))
    candidates = [
        dict(zip([key for key, _ in axes], combination, strict=True))
        for combination in itertools.product(*(v for _, v in axes))
    ]
    from hydra.errors import InstantiationException

    embedder = hydra.utils.instantiate(cfg.embedder)
    for candidate in candidates:  # a combination the components refuse fails now, not after hours of runs
        changed = _with(cfg, candidate)
        try:
            hydra.utils.instantiate(changed.memory, embedder=embedder)
            hydra.utils.instantiate(changed.reader)
        except (ConfigError, InstantiationException) as error:
            cause = error.__cause__ or error
            raise ConfigError(f"experiment.grid: the candidate {candidate} cannot run: {cause}") from None
    return candidates


def fold_of_conversation(conversations: Sequence[Conversation], folds: int) -> dict[str, int]:
    """Conversation i (in dataset order) goes to fold i mod K: deterministic, and no question of a
    conversation is ever split from the others."""
    return {conversation.conversation_id: i % folds for i, conversation in enumerate(conversations)}


def choose(scores: Sequence[np.ndarray], rows: np.ndarray) -> int:
    """The candidate with the best mean over `rows` (the first of equals: the grid's order decides)."""
    means = [float(np.mean(values[rows])) if rows.any() else 0.0 for values in scores]
    return int(np.argmax(means))


def cross_validate(
    evaluations: Sequence[Evaluation], fold_of: Mapping[str, int], folds: int, metric: str
) -> CrossValidation:
    """Choose each fold's candidate on the other folds' questions by `metric`, score it on the fold's own."""
    query_ids = evaluations[0].query_ids
    if any(evaluation.query_ids != query_ids for evaluation in evaluations):
        raise ConfigError(
            "experiment.grid: candidates answered different questions; a grid may change search, not data"
        )
    fold = np.array([fold_of[qid] for qid in query_ids])
    held_out = {name: np.zeros(len(query_ids)) for name in evaluations[0].per_query}
    choices, fold_scores = [], []
    for k in range(folds):
        train, test = fold != k, fold == k
        best = choose([evaluation.per_query[metric] for evaluation in evaluations], train)
        choices.append(best)
        for name in held_out:
            held_out[name][test] = evaluations[best].per_query[name][test]
        fold_scores.append(float(np.mean(held_out[metric][test])))
    return CrossValidation(choices, fold_scores, held_out)


def _cv_metrics(result: CrossValidation, evaluations: Sequence[Evaluation], candidates: Sequence[Mapping[str, object]],
                metric: str, tracker: Tracker) -> dict[str, float]:  # fmt: skip
    folds = len(result.choices)
    metrics: dict[str, float] = {f"{CV_PREFIX}{metric}": float(np.mean(result.fold_scores)),
                                 f"{CV_PREFIX}{metric}_std": float(np.std(result.fold_scores)),
                                 f"{CV_PREFIX}folds": folds, f"{CV_PREFIX}candidates": len(candidates)}  # fmt: skip
    # The other metrics and the categories pool the held-out questions (a fold holds few of each category).
    for name, values in result.held_out.items():
        metrics.setdefault(f"{CV_PREFIX}{name}", float(np.mean(values)))
    metrics.update(_category_means(result.held_out, evaluations[0], CV_PREFIX))
    every = choose(
        [evaluation.per_query[metric] for evaluation in evaluations], np.ones(len(evaluations[0].query_ids), bool)
    )
    for i, evaluation in enumerate(evaluations):  # each candidate on all questions: in-sample, for the ablation
        metrics[f"{CV_PREFIX}candidate{i}/{metric}"] = float(np.mean(evaluation.per_query[metric]))
    for k, (choice, score) in enumerate(zip(result.choices, result.fold_scores, strict=True)):
        metrics[f"{CV_PREFIX}fold{k}/{metric}"] = score
        metrics[f"{CV_PREFIX}fold{k}/choice"] = choice
    metrics[f"{CV_PREFIX}choice_all"] = every  # what all conversations choose: the recommended setting
    keys = list(candidates[0])
    tracker.log_table(
        "retrieval/cv_candidates",
        ["candidate", *keys, metric, "chosen_by_folds", "chosen_by_all"],
        [[i, *(candidate[key] for key in keys), float(np.mean(evaluations[i].per_query[metric])),
          ";".join(str(k) for k, c in enumerate(result.choices) if c == i), i == every]
         for i, candidate in enumerate(candidates)],
    )  # fmt: skip
    return metrics


def _with(cfg: DictConfig, candidate: Mapping[str, object]) -> DictConfig:
    changed = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))  # from a mapping
    for key, value in candidate.items():
        OmegaConf.update(changed, key, value, merge=False)
    return changed


def _is_current(cfg: DictConfig, candidate: Mapping[str, object]) -> bool:
    return all(OmegaConf.select(cfg, key) == value for key, value in candidate.items())
