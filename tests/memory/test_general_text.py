from dataclasses import replace

import numpy as np
import pytest

from memos_lab.errors import ConfigError
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.memory.textual.lexical import ranks as _ranks
from memos_lab.models.embedder import Embedder


class TableEmbedder(Embedder):
    """Hand-set vectors, so dense rankings are known exactly."""

    name, dim = "table", 2

    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return np.array([self.table[text] for text in texts], dtype=np.float32)


def test_rrf_fuses_bm25_and_dense_ranks_by_hand():
    table = {
        "apples are red": [1.0, 0.0],
        "bananas are yellow": [0.0, 1.0],
        "cherries red apples": [0.6, 0.8],
        "red": [0.0, 1.0],  # the query: densely nearest to bananas, lexically to the red ones
    }
    memory = GeneralTextMemory(TableEmbedder(table), rrf_k=1)
    memory.add(["apples are red", "bananas are yellow", "cherries red apples"])
    # BM25 ranks: "apples are red" (shorter doc) 1, "cherries red apples" 2, bananas 3.
    # Dense ranks: bananas 1 (1.0), cherries 2 (0.8), apples 3 (0.0).
    hits = memory.search("red", 3)
    expected = {
        "apples are red": 1 / 2 + 1 / 4,
        "cherries red apples": 1 / 3 + 1 / 3,
        "bananas are yellow": 1 / 4 + 1 / 2,
    }
    assert [hit.item.text for hit in hits] == ["apples are red", "bananas are yellow", "cherries red apples"]
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.item.text])
    memory.settings = replace(memory.settings, fusion="dense")
    assert [hit.item.text for hit in memory.search("red", 1)] == ["bananas are yellow"]
    memory.settings = replace(memory.settings, fusion="bm25")
    assert [hit.item.text for hit in memory.search("red", 1)] == ["apples are red"]


def test_ranks_are_one_based_and_ties_share_a_rank():
    assert _ranks(np.array([0.5, 2.0, 0.5, -np.inf])).tolist() == [2.0, 1.0, 2.0, 4.0]


def test_search_after_hard_delete_reindexes(embedder):
    memory = GeneralTextMemory(embedder)
    ids = memory.add(["lisbon trip", "porto trip", "paris trip"])
    memory.delete(ids[1], hard=True)
    assert sorted(hit.item.text for hit in memory.search("trip", 5)) == ["lisbon trip", "paris trip"]


def test_query_with_only_unknown_words_still_ranks_densely(embedder):
    memory = GeneralTextMemory(embedder)
    memory.add(["lisbon trip"])
    assert len(memory.search("zzz qqq", 5)) == 1


def test_unknown_fusion_is_refused(embedder):
    with pytest.raises(ConfigError, match="fusion.*rrf"):
        GeneralTextMemory(embedder, fusion="max")


def test_text_weight_adds_rankings_over_the_items_own_text(embedder, tmp_path):
    from memos_lab.cube import MemCube
    from memos_lab.memory.item import MemoryItem, MemoryMetadata

    memory = GeneralTextMemory(embedder, text_weight=0.5)
    memory.add(
        [MemoryItem("Maya: yes!", MemoryMetadata(extra={"key": "Tom: did you see Lisbon? Maya: yes!"})), "Lisbon trip"]
    )
    mask = np.ones(2, bool)
    assert len(memory._rankings("Lisbon", mask)) == 4
    np.testing.assert_allclose(memory._text_matrix[0], embedder.encode(["Maya: yes!"])[0])
    MemCube.create("a", memory).dump(tmp_path / "c")
    loaded = MemCube.load(tmp_path / "c", embedder).text
    assert [(h.item.id, h.score) for h in loaded.search("Lisbon", 2)] == [
        (h.item.id, h.score) for h in memory.search("Lisbon", 2)
    ]
