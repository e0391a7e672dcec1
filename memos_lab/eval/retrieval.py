"""Ranking metrics over turn-level evidence, computed with ranx."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from memos_lab.errors import MemosError

DEFAULT_CUTOFFS = (1, 5, 10)


def per_query_metrics(
    qrels: Mapping[str, Sequence[str]],
    run: Mapping[str, Mapping[str, float]],
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    ndcg_cutoff: int = 10,
) -> dict[str, np.ndarray]:
    """Per-query scores, aligned with `sorted(qrels)`.

    qrels: query id -> its relevant (evidence) document ids; run: query id -> document id -> score.
    `recall_all@k` is 1 when every relevant document is in the top k (LoCoMo practice for
    multi-evidence questions), `recall_any@k` when at least one is, and `recall@k` is the share of the
    relevant documents in the top k (the fractional recall of the LoCoMo paper's retrieval table).
    """
    from ranx import Qrels, Run, evaluate

    empty = sorted(qid for qid, docs in qrels.items() if not docs)
    if empty:
        raise MemosError(f"queries without relevant documents cannot be scored: {empty[:5]}")
    query_ids = sorted(qrels)
    # ranx drops queries whose run is empty; a sentinel document keeps them (scored as misses).
    run_dict = {qid: dict(run.get(qid) or {"__no_result__": 0.0}) for qid in query_ids}
    qrels_dict = {qid: dict.fromkeys(qrels[qid], 1) for qid in query_ids}
    names = [f"recall@{k}" for k in cutoffs] + [f"hit_rate@{k}" for k in cutoffs] + [f"ndcg@{ndcg_cutoff}", "mrr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's cast warnings inside ranx are noise here
        scores = evaluate(Qrels(qrels_dict), Run(run_dict), names, return_mean=False, make_comparable=True)
    if len(names) == 1:  # ranx returns a bare array for a single metric
        scores = {names[0]: scores}
    result: dict[str, np.ndarray] = {}
    for k in cutoffs:
        result[f"recall@{k}"] = np.asarray(scores[f"recall@{k}"], dtype=float)
        result[f"recall_all@{k}"] = (np.asarray(scores[f"recall@{k}"]) >= 1.0 - 1e-9).astype(float)
        result[f"recall_any@{k}"] = np.asarray(scores[f"hit_rate@{k}"], dtype=float)
    result[f"ndcg@{ndcg_cutoff}"] = np.asarray(scores[f"ndcg@{ndcg_cutoff}"], dtype=float)
    result["mrr"] = np.asarray(scores["mrr"], dtype=float)
    return result


def session_recall(
    qrels: Mapping[str, Sequence[str]],
    run: Mapping[str, Mapping[str, float]],
    session_of: Mapping[str, str],
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
) -> dict[str, np.ndarray]:
    """Session-level recall, aligned with `sorted(qrels)`: the sessions of the top-k documents against the
    sessions of the evidence. `session_recall_all@k` is 1 when every evidence session holds one of the top k
    documents, `session_recall_any@k` when one does. Ties keep the run's order (the order of its hits)."""
    result = {f"session_recall_{kind}@{k}": np.zeros(len(qrels)) for kind in ("all", "any") for k in cutoffs}
    for row, qid in enumerate(sorted(qrels)):
        wanted = {session_of[doc] for doc in qrels[qid]}
        ranked = sorted((run.get(qid) or {}).items(), key=lambda pair: -pair[1])  # stable: ties keep hit order
        for k in cutoffs:
            found = {session_of.get(doc) for doc, _ in ranked[:k]}
            result[f"session_recall_all@{k}"][row] = float(wanted <= found)
            result[f"session_recall_any@{k}"][row] = float(bool(wanted & found))
    return result


def mean_metrics(per_query: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{name}": float(np.mean(values)) for name, values in per_query.items()}


def latency_percentiles(milliseconds: Sequence[float | None], prefix: str) -> dict[str, float]:
    """p50 and p95 of the measured values; None marks one not measurable (a served answer's TTFT without
    streaming), and with none measured there is no percentile to report, so the metrics are left out."""
    values = np.asarray([value for value in milliseconds if value is not None], dtype=float)
    if values.size == 0:
        return {}
    return {f"{prefix}_p50": float(np.percentile(values, 50)), f"{prefix}_p95": float(np.percentile(values, 95))}
