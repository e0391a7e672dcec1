"""The incremental BM25 index (bm25s's scores bit for bit, a changed index equal to a fresh one), the ranks fused
from it, and general_text's row-wise status filter."""

from __future__ import annotations

import random

import bm25s
import numpy as np
import pytest

from memos_lab.data.synthetic import generate_dialogues
from memos_lab.memory.textual.base import SearchFilter
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.memory.textual.lexical import Bm25Index, light_stem, ranks


def dialogue_texts() -> tuple[list[str], list[str]]:
    texts, queries = [], []
    for conversation in generate_dialogues(seed=0, n_conversations=4):
        texts += [f"{turn.speaker}: {turn.text}" for turn in conversation.turns]
        queries += [question.question for question in conversation.questions]
    return texts, [*queries, "the and of", "zzz unknown words", "painting painted paints paint"]


def bm25s_index(texts: list[str], stemming: bool) -> bm25s.BM25:
    """What the index was before it was incremental: a bm25s index built over all texts."""
    index = bm25s.BM25(k1=1.5, b=0.75)
    index.index(
        bm25s.tokenize(texts, stemmer=light_stem if stemming else None, show_progress=False), show_progress=False
    )
    return index


def bm25s_scores(texts: list[str], query: str, stemming: bool) -> np.ndarray:
    stemmer = light_stem if stemming else None
    index = bm25s_index(texts, stemming)
    tokens = bm25s.tokenize([query], return_ids=False, stemmer=stemmer, show_progress=False)[0]
    known = [token for token in tokens if token in index.vocab_dict]
    if not known:
        return np.zeros(len(texts), dtype=np.float32)
    return np.asarray(index.get_scores(known), dtype=np.float32)


def fresh(texts: list[str], stemming: bool) -> Bm25Index:
    index = Bm25Index(1.5, 0.75, stemming)
    index.add(texts)
    return index


@pytest.mark.parametrize("stemming", [False, True])
def test_scores_equal_bm25s_bit_for_bit(stemming):
    texts, queries = dialogue_texts()
    index = fresh(texts, stemming)
    for query in queries:
        np.testing.assert_array_equal(index.scores(query), bm25s_scores(texts, query, stemming))
    stored = bm25s_index(texts, stemming).scores
    assert index.nbytes() == sum(stored[name].nbytes for name in ("data", "indices", "indptr"))


@pytest.mark.parametrize("stemming", [False, True])
def test_adds_and_removals_give_a_fresh_indexs_scores(stemming):
    texts, queries = dialogue_texts()
    rng = random.Random(0)
    index, held = Bm25Index(1.5, 0.75, stemming), []
    pending = list(texts)
    for step in range(40):
        if step % 3 == 2 and held:  # remove a few rows anywhere, the rest move up
            rows = sorted(rng.sample(range(len(held)), min(len(held), rng.randint(1, 5))))
            index.remove(rows)
            held = [text for row, text in enumerate(held) if row not in set(rows)]
        else:
            batch, pending = pending[: rng.randint(1, 12)], pending[12:]
            batch = batch or [rng.choice(texts) + " again"]  # re-adding a text removed before
            index.add(batch)
            held += batch
        assert len(index) == len(held)
        if held:
            query = rng.choice(queries)
            expected = bm25s_scores(held, query, stemming)
            np.testing.assert_array_equal(index.scores(query), expected)
            np.testing.assert_array_equal(fresh(held, stemming).scores(query), expected)
    index.remove(list(range(len(held))))
    assert len(index) == 0 and index.scores(queries[0]).shape == (0,) and index.nbytes() == 0


def test_general_text_after_adds_updates_and_deletes_ranks_as_a_fresh_memory(embedder):
    texts, queries = dialogue_texts()
    changed = GeneralTextMemory(embedder, fusion="bm25")
    ids = changed.add(texts[:60])
    changed.update(ids[3], "Caroline painted a sunrise over the lake")
    changed.delete(ids[5], hard=True)
    changed.delete(ids[7])  # soft: still stored, ranked out by the status filter
    changed.add(texts[60:90])
    changed.delete(ids[10], hard=True)
    rebuilt = GeneralTextMemory(embedder, fusion="bm25")
    rebuilt.add(changed.get_all(filters={"statuses": ["active", "archived", "deleted"]}))
    for query in queries[:20]:
        expected = [(hit.item.id, hit.score) for hit in rebuilt.search(query, 10)]
        assert [(hit.item.id, hit.score) for hit in changed.search(query, 10)] == expected


def test_ranks_equal_scipys_min_ranks_with_ties_and_infinities():
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 500):
        scores = rng.integers(0, 5, size).astype(np.float64)  # many ties
        scores[rng.random(size) < 0.2] = -np.inf
        np.testing.assert_array_equal(ranks(scores), rankdata(-scores, method="min"))


def test_status_filters_read_off_rows_agree_with_matching_each_item(embedder):
    memory = GeneralTextMemory(embedder)
    ids = memory.add(dialogue_texts()[0][:40])
    memory.delete(ids[1])
    memory.update(ids[2], "Melanie painted a lake at dawn")
    memory.delete(ids[4], hard=True)
    for statuses in (("active",), ("deleted",), ("archived", "deleted"), ("active", "archived", "deleted")):
        search_filter = SearchFilter(statuses=statuses)
        expected = [search_filter.matches(memory.get(item_id)) for item_id in memory._row_ids]
        assert memory._filter_mask(search_filter).tolist() == expected
