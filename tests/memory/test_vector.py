"""faiss specifics of the `vector` backend: every index type, tombstones, IVF training."""

from __future__ import annotations

import pytest

from memos_lab.cube import MemCube
from memos_lab.errors import ConfigError
from memos_lab.memory.textual.vector import VectorMemory

TEXTS = [f"memory code{i} about {['tea', 'trains', 'cats', 'rain'][i % 4]}" for i in range(120)]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_each_index_type_searches_deletes_and_persists(embedder, tmp_path, index_type):
    memory = VectorMemory(embedder, index_type=index_type, ivf_nlist=4, ivf_nprobe=4, fusion="dense")
    ids = memory.add(TEXTS)
    assert memory.search("memory code7 about rain", 1)[0].item.id == ids[7]
    memory.delete(ids[7], hard=True)
    assert ids[7] not in [hit.item.id for hit in memory.search("memory code7 about rain", 10)]
    MemCube.create("a", memory).dump(tmp_path / "c")
    loaded = MemCube.load(tmp_path / "c", embedder).text
    assert [h.item.id for h in loaded.search("code8 tea", 5)] == [h.item.id for h in memory.search("code8 tea", 5)]


def test_hnsw_rebuilds_once_tombstones_outnumber_live_vectors(embedder):
    memory = VectorMemory(embedder, index_type="hnsw")
    ids = memory.add(TEXTS)
    for item_id in ids[:60]:
        memory.delete(item_id, hard=True)
    assert memory._index.ntotal == 120 and len(memory._tombstones) == 60
    memory.delete(ids[60], hard=True)
    assert memory._index.ntotal == 59 and not memory._tombstones
    assert memory._faiss_id[ids[100]] == 100  # ids survive the rebuild
    assert memory.search("memory code100 about tea", 1)[0].item.id == ids[100]


def test_bad_settings_are_refused(embedder):
    with pytest.raises(ConfigError, match="index_type.*flat"):
        VectorMemory(embedder, index_type="lsh")
    with pytest.raises(ConfigError, match="hnsw_m"):
        VectorMemory(embedder, hnsw_m=0)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_deleted_and_archived_items_are_ruled_out_inside_faiss_without_over_fetching(embedder, tmp_path, index_type):
    memory = VectorMemory(embedder, index_type=index_type, ivf_nlist=4, ivf_nprobe=4, fusion="dense", candidates=20)
    ids = memory.add(TEXTS)
    for item_id in ids[::10]:  # 10% soft-deleted
        memory.delete(item_id)
    memory.update(ids[1], "memory code1 about tea, revised")  # archives ids[1]
    memory.delete(ids[2], hard=True)
    fetched = []
    dense_candidates = memory._dense_candidates
    memory._dense_candidates = lambda *args: fetched.append(args[1]) or dense_candidates(*args)
    hits = memory.search("memory code about tea", 20)
    gone = set(ids[::10]) | {ids[1], ids[2]}
    assert len(hits) == 20 and not gone & {hit.item.id for hit in hits}
    assert len(fetched) == 1  # one faiss search of the candidates asked for, not a growing over-fetch
    assert {hit.item.id for hit in memory.search("memory code", 200, {"statuses": ["deleted"]})} == set(ids[::10])
    MemCube.create("a", memory).dump(tmp_path / "c")
    loaded = MemCube.load(tmp_path / "c", embedder).text
    assert [h.item.id for h in loaded.search("code8 tea", 20)] == [h.item.id for h in memory.search("code8 tea", 20)]
