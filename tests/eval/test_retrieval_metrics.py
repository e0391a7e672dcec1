import pytest

from memos_lab.errors import MemosError
from memos_lab.eval.retrieval import latency_percentiles, mean_metrics, per_query_metrics, session_recall


def test_metrics_on_a_hand_checked_case():
    qrels = {"a": ["d1", "d2"], "b": ["d3"], "c": ["d9"]}
    run = {"a": {"d1": 3.0, "x": 2.0, "d2": 1.0}, "b": {"d3": 1.0}, "c": {}}
    metrics = mean_metrics(per_query_metrics(qrels, run))
    # a: d1 at rank 1, d2 at rank 3; b: hit at rank 1; c: no result at all.
    assert metrics["recall_all@1"] == pytest.approx(1 / 3)  # only b has all evidence at rank 1
    assert metrics["recall_any@1"] == pytest.approx(2 / 3)
    assert metrics["recall_all@5"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 + 0) / 3)
    ndcg_a = (1 + 1 / 2) / (1 + 1 / 1.5849625007211562)  # DCG: ranks 1 and 3; ideal: ranks 1 and 2
    assert metrics["ndcg@10"] == pytest.approx((ndcg_a + 1 + 0) / 3)


def test_queries_without_evidence_are_refused():
    with pytest.raises(MemosError, match="q0"):
        per_query_metrics({"q0": []}, {"q0": {"d": 1.0}})


def test_latency_percentiles():
    values = latency_percentiles([1, 2, 3, 4, 100], "search_ms")
    assert values == {"search_ms_p50": 3.0, "search_ms_p95": pytest.approx(80.8)}


def test_fractional_recall_counts_the_share_of_evidence_found():
    qrels = {"a": ["d1", "d2", "d3"], "b": ["d4"]}
    run = {"a": {"d1": 3.0, "x": 2.0, "d2": 1.0, "d3": 0.5}, "b": {"y": 1.0, "d4": 0.5}}
    metrics = mean_metrics(per_query_metrics(qrels, run, cutoffs=(1, 3)))
    assert metrics["recall@1"] == pytest.approx((1 / 3 + 0) / 2)  # a: d1 of three; b: nothing at rank 1
    assert metrics["recall@3"] == pytest.approx((2 / 3 + 1) / 2)  # a: d1 and d2 in the top 3 (d3 is 4th); b: d4
    assert metrics["recall_all@3"] == 0.5


def test_session_recall_looks_at_the_sessions_of_the_top_k():
    session_of = {"d1": "s1", "d2": "s1", "d3": "s2", "d4": "s3"}
    qrels = {"a": ["d1", "d3"], "b": ["d4"]}
    # a: d2 shares d1's session, so s1 is found at rank 1 though d1 is not; s2 only at rank 3.
    run = {"a": {"d2": 3.0, "d4": 2.0, "d3": 1.0}, "b": {"d1": 1.0}}
    metrics = mean_metrics(session_recall(qrels, run, session_of, cutoffs=(1, 3)))
    assert metrics["session_recall_any@1"] == 0.5  # a yes (s1), b no
    assert metrics["session_recall_all@1"] == 0.0
    assert metrics["session_recall_all@3"] == 0.5  # a: s1 and s2 by rank 3; b: s3 never


def test_latency_percentiles_leave_out_what_was_not_measured():
    # A served answer without streaming has no TTFT: the measured ones count, none measured gives no metric.
    assert latency_percentiles([None, 2.0, None, 4.0], "ttft_ms") == {
        "ttft_ms_p50": 3.0,
        "ttft_ms_p95": pytest.approx(3.9),
    }
    assert latency_percentiles([None, None], "ttft_ms") == {}
