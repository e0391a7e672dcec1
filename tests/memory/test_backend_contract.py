"""The contract every declarative backend keeps (run on each via the `text_memory` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from memos_lab.cube import MemCube
from memos_lab.errors import DataError
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.peers.mem0 import Mem0Memory

TOPICS = ["lisbon trip", "green tea", "red bicycle", "piano lessons", "chess club", "garden roses"]


def corpus(n: int = 60) -> list[MemoryItem]:
    return [
        MemoryItem(
            f"{name} said the {TOPICS[i % len(TOPICS)]} was great, note {i}",
            MemoryMetadata(
                user="u1" if i % 2 else "u2",
                session=f"s{i // 10}",
                event_time=f"2024-01-{1 + i % 28:02d}",
                tags=("rare",) if i == 37 else (),
            ),
        )
        for i, name in ((i, ["Maya", "Tom", "Ana"][i % 3]) for i in range(n))
    ]


def ranked(memory, queries=("lisbon trip", "piano", "Tom chess club", "roses note 7")) -> list[list[tuple[str, float]]]:
    return [[(hit.item.id, round(hit.score, 6)) for hit in memory.search(query, 8)] for query in queries]


def test_relevant_item_comes_first_and_scores_descend(text_memory):
    text_memory.add(corpus())
    hits = text_memory.search("Maya piano lessons note 15", 5)
    assert hits[0].item.text.endswith("note 15")
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert len({hit.item.id for hit in hits}) == 5


def test_a_filter_that_matches_one_item_in_many_still_finds_it(text_memory):
    text_memory.add(corpus(300))
    [hit] = text_memory.search("garden", 10, {"tags": ["rare"]})
    assert hit.item.text.endswith("note 37")
    assert all(hit.item.metadata.user == "u2" for hit in text_memory.search("tea", 20, {"user": "u2"}))


def test_ids_stay_stable_across_hard_deletes(text_memory):
    if isinstance(text_memory, Mem0Memory):
        # Where the semantics differ: mem0's faiss store ranks by embeddings only (no lexical index), so the
        # exact note number in the query cannot be relied on to put that note first.
        pytest.skip("mem0 (faiss) is dense-only: exact-term top-1 is not part of its contract")
    ids = text_memory.add(corpus())
    for item_id in ids[::2]:
        text_memory.delete(item_id, hard=True)
    survivors = set(ids[1::2])
    for i in (1, 15, 59):
        [hit] = text_memory.search(f"note {i}", 1)
        assert hit.item.id == ids[i] and hit.item.text.endswith(f"note {i}")
    assert {item.id for item in text_memory.get_all()} == survivors
    assert all(hit.item.id in survivors for hit in text_memory.search("trip", 30))
    more = text_memory.add(["a brand new memory about kites"])
    assert text_memory.search("kites", 1)[0].item.id == more[0]


def test_dump_load_round_trip_gives_identical_results(text_memory, embedder, tmp_path):
    items = corpus()
    ids = text_memory.add(items)
    text_memory.update(ids[3], "Tom now plays the cello")
    text_memory.delete(ids[4])
    text_memory.delete(ids[5], hard=True)
    cube = MemCube.create("alice", text_memory)
    cube.dump(tmp_path / "cube")
    loaded = MemCube.load(tmp_path / "cube", embedder).text
    assert type(loaded) is type(text_memory) and loaded.config() == text_memory.config()
    assert ranked(loaded) == ranked(text_memory)
    # The loaded memory keeps working: the same new items rank the same way in both.
    for memory in (loaded, text_memory):
        memory.add([MemoryItem("kites fly over Lisbon", id="kite")])
        memory.delete(ids[6], hard=True)
    assert ranked(loaded, ("kites", "lisbon trip")) == ranked(text_memory, ("kites", "lisbon trip"))


def test_index_size_is_reported(text_memory):
    text_memory.add(corpus())
    text_memory.search("tea", 3)
    assert text_memory.index_nbytes() >= 60 * text_memory.embedder.dim * 4


def test_keys_index_items_under_a_richer_text(text_memory):
    [_plain, keyed] = text_memory.add(
        [
            "Maya: yes!",
            MemoryItem(
                "Maya: it was lovely",
                MemoryMetadata(extra={"key": "Tom: how was the Lisbon trip? Maya: it was lovely"}),
            ),
        ]
    )
    [hit] = text_memory.search("Lisbon trip", 1)
    assert hit.item.id == keyed and hit.item.text == "Maya: it was lovely"
    updated = text_memory.update(keyed, "Maya: it rained")
    assert "key" not in updated.metadata.extra  # the old key described the old text
    assert np.allclose(updated.embedding, text_memory.embedder.encode(["Maya: it rained"])[0])


def test_a_search_given_its_query_vector_encodes_nothing_and_finds_exactly_the_same(text_memory, monkeypatch):
    text_memory.add(corpus())
    queries = ["lisbon trip", "Tom chess club", "roses note 7", "Maya piano lessons"]
    alone = [[(hit.item.id, hit.score) for hit in text_memory.search(query, 8)] for query in queries]
    vectors = text_memory.embedder.encode(queries)  # the queries in one batch, as a server encodes them

    def refuse(texts):
        raise AssertionError(f"encoded {texts} though the search was given its vector")

    monkeypatch.setattr(text_memory.embedder, "encode", refuse)
    given = [
        [(hit.item.id, hit.score) for hit in text_memory.search(query, 8, query_vector=vector)]
        for query, vector in zip(queries, vectors, strict=True)
    ]
    assert given == alone
    for bad in (vectors[0][:-1], np.full_like(vectors[0], np.nan), [0.0] * len(vectors[0])):
        with pytest.raises(DataError, match="query vector"):
            text_memory.search("lisbon trip", 8, query_vector=bad)
