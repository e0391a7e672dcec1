"""Stored items are values no caller can change, and a batch is checked whole before anything is stored
(every backend, via the `text_memory` fixture)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memos_lab.errors import DataError, MemosError
from memos_lab.memory.item import MemoryItem, MemoryMetadata


def test_nothing_a_caller_holds_can_change_a_stored_item(text_memory):
    dim = text_memory.embedder.dim
    vector = np.zeros(dim, dtype=np.float32)
    vector[0] = 1.0
    extra = {"mood": "calm"}
    mine = MemoryItem("Maya moved to Lisbon", MemoryMetadata(extra=extra, tags=["move"]), embedding=vector)
    [item_id] = text_memory.add([mine, "Tom likes green tea"])[:1]
    vector[:] = 7.0  # the caller's own array: the stored copy was taken at construction
    extra["mood"] = "angry"
    stored = text_memory.get(item_id)
    assert (
        stored.embedding[0] == 1.0 and stored.metadata.extra == {"mood": "calm"} and stored.metadata.tags == ("move",)
    )
    for handed_out in (stored, text_memory.get_all()[0], text_memory.search("Lisbon", 1)[0].item):
        with pytest.raises(dataclasses.FrozenInstanceError):
            handed_out.text = "Maya moved to Mars"
        with pytest.raises(dataclasses.FrozenInstanceError):
            handed_out.metadata.status = "deleted"
        with pytest.raises(TypeError, match="read-only"):
            handed_out.metadata.extra["mood"] = "angry"
        with pytest.raises(ValueError):
            handed_out.embedding[0] = 5.0
        with pytest.raises(ValueError):
            handed_out.embedding.setflags(write=True)
    assert text_memory.get(item_id).text == "Maya moved to Lisbon"
    assert text_memory.search("Lisbon", 1)[0].item.id == item_id


def _bad_items(dim: int) -> dict[str, MemoryItem]:
    def vector(value: float = 0.1, size: int = dim, dtype: type = np.float32) -> np.ndarray:
        return np.full(size, value, dtype=dtype)

    return {
        "embedding size": MemoryItem("wrong size", embedding=vector(size=dim + 1)),
        "embedding NaN": MemoryItem("not a number", embedding=vector(np.nan)),
        "embedding inf": MemoryItem("infinite", embedding=vector(np.inf)),
        "embedding dtype": MemoryItem("integers", embedding=np.ones(dim, dtype=np.int64)),
        "embedding list": MemoryItem("a list", embedding=[0.1] * dim),  # type: ignore[arg-type]
        "id too long": MemoryItem("long id", id="x" * 129),
        "id path": MemoryItem("path id", id="../../victim"),
        "id type": MemoryItem("int id", id=5),  # type: ignore[arg-type]
        "tags": MemoryItem("tags", MemoryMetadata(tags=5)),  # type: ignore[arg-type]
        "extra": MemoryItem("extra", MemoryMetadata(extra={"n": 1})),  # type: ignore[dict-item]
        "status": MemoryItem("status", MemoryMetadata(status="gone")),
        "version": MemoryItem("version", MemoryMetadata(version=True)),
        "user": MemoryItem("user", MemoryMetadata(user=3)),  # type: ignore[arg-type]
        "text": MemoryItem(None),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("kind", list(_bad_items(4)))
def test_one_bad_item_stores_none_of_its_batch(text_memory, kind):
    text_memory.add(["Ana plays the piano"])
    bad = _bad_items(text_memory.embedder.dim)[kind]
    with pytest.raises(MemosError) as refused:
        text_memory.add([MemoryItem("Ana visited Lisbon"), bad, MemoryItem("Tom fixed the roof")])
    assert "\n" not in str(refused.value)
    assert len(text_memory) == 1 and [hit.item.text for hit in text_memory.search("Lisbon roof piano", 5)] == [
        "Ana plays the piano"
    ]


def test_duplicate_ids_in_one_batch_and_unknown_update_fields_are_refused(text_memory):
    with pytest.raises(MemosError, match="already exists"):
        text_memory.add([MemoryItem("one", id="same"), MemoryItem("two", id="same")])
    assert len(text_memory) == 0
    [item_id] = text_memory.add(["Ana plays the piano"])
    with pytest.raises(MemosError, match="unknown metadata field"):
        text_memory.update(item_id, "Ana plays the violin", colour="red")
    with pytest.raises(DataError, match="tags"):
        text_memory.update(item_id, "Ana plays the violin", tags="music")
    assert [item.text for item in text_memory.get_all()] == ["Ana plays the piano"]
