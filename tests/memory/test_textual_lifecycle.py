import pytest

from memos_lab.errors import ConfigError, MemosError, NotFoundError
from memos_lab.memory.item import ACTIVE, ARCHIVED, DELETED, MemoryItem, MemoryMetadata


def test_add_and_get_keep_text_metadata_and_embedding(text_memory):
    item = MemoryItem("Maya moved to Lisbon", MemoryMetadata(user="maya", session="s1", tags=("move",)))
    [item_id] = text_memory.add([item])
    stored = text_memory.get(item_id)
    assert stored.text == "Maya moved to Lisbon"
    assert stored.metadata.user == "maya" and stored.metadata.tags == ("move",)
    assert stored.embedding is not None and stored.embedding.shape == (256,)


def test_update_archives_the_old_version_and_links_both(text_memory):
    [old_id] = text_memory.add(["Maya lives in Lisbon"])
    new = text_memory.update(old_id, "Maya lives in Porto")
    old = text_memory.get(old_id)
    assert old.metadata.status == ARCHIVED and old.metadata.successor_id == new.id
    assert new.metadata.predecessor_id == old_id and new.metadata.version == 2
    assert [hit.item.text for hit in text_memory.search("Maya lives", 5)] == ["Maya lives in Porto"]
    archived = text_memory.search("Maya lives", 5, {"statuses": ["archived"]})
    assert [hit.item.id for hit in archived] == [old_id]
    with pytest.raises(MemosError, match="archived"):
        text_memory.update(old_id, "again")


def test_soft_delete_hides_but_keeps_hard_delete_purges(text_memory):
    ids = text_memory.add(["alpha fact", "beta fact"])
    text_memory.delete(ids[0])
    assert text_memory.get(ids[0]).metadata.status == DELETED
    assert [hit.item.id for hit in text_memory.search("fact", 5)] == [ids[1]]
    text_memory.delete(ids[0], hard=True)
    with pytest.raises(NotFoundError, match=ids[0]):
        text_memory.get(ids[0])
    assert len(text_memory) == 1 and text_memory.get(ids[1]).metadata.status == ACTIVE


@pytest.mark.parametrize("text", ["", "   ", "x" * 100_001])
def test_bad_texts_are_refused_and_nothing_is_stored(text_memory, text):
    text_memory.add(["kept"])
    with pytest.raises(MemosError, match="text"):
        text_memory.add(["fine", text])
    assert [item.text for item in text_memory.get_all()] == ["kept"]


def test_filters_select_by_user_session_tags_and_time(text_memory):
    text_memory.add(
        [
            MemoryItem("a one", MemoryMetadata(user="u1", session="s1", tags=("x",), event_time="2024-01-01")),
            MemoryItem("a two", MemoryMetadata(user="u1", session="s2", tags=("x", "y"), event_time="2024-02-01")),
            MemoryItem("a three", MemoryMetadata(user="u2", session="s1", event_time="2024-03-01")),
        ]
    )
    texts = lambda filters: sorted(hit.item.text for hit in text_memory.search("a", 10, filters))  # noqa: E731
    assert texts({"user": "u1"}) == ["a one", "a two"]
    assert texts({"session": "s1"}) == ["a one", "a three"]
    assert texts({"tags": ["x", "y"]}) == ["a two"]
    assert texts({"time_from": "2024-01-15", "time_to": "2024-02-15"}) == ["a two"]
    with pytest.raises(ConfigError, match="unknown filter field.*colour"):
        text_memory.search("a", 10, {"colour": "red"})
    with pytest.raises(ConfigError, match="statuses"):
        text_memory.search("a", 10, {"statuses": ["gone"]})


def test_unknown_ids_and_bad_arguments_fail_clearly(text_memory):
    with pytest.raises(NotFoundError, match="nope"):
        text_memory.get("nope")
    with pytest.raises(NotFoundError):
        text_memory.delete("nope")
    with pytest.raises(MemosError, match="query"):
        text_memory.search("", 3)
    with pytest.raises(ConfigError, match="top_k"):
        text_memory.search("q", 0)


def test_merge_keeps_the_merged_items_archived_with_provenance(text_memory):
    old, new, other = text_memory.add(
        [
            MemoryItem(
                "Maya lives in Lisbon", MemoryMetadata(source="chat/D1:3", event_time="2024-01-01", tags=("home",))
            ),
            MemoryItem("Maya lives in Porto now", MemoryMetadata(source="chat/D4:7", event_time="2024-05-01")),
            "Tom likes chess",
        ]
    )
    merged = text_memory.merge([old, new])
    assert merged.text == "Maya lives in Porto now"  # the newest event wins by default
    assert merged.metadata.extra["merged_from"] == f"{old};{new}"
    assert merged.metadata.extra["merged_sources"] == "chat/D1:3;chat/D4:7" and merged.metadata.tags == ("home",)
    for item_id in (old, new):
        assert text_memory.get(item_id).metadata.status == ARCHIVED
        assert text_memory.get(item_id).metadata.successor_id == merged.id
    assert [hit.item.id for hit in text_memory.search("Maya lives", 5)] == [merged.id, other]
    with pytest.raises(MemosError, match="not active"):
        text_memory.merge([old, other])
    with pytest.raises(MemosError, match="two or more"):
        text_memory.merge([other])


def test_near_duplicates_are_found(text_memory):
    a, b, _ = text_memory.add(["Maya lives in Lisbon", "Maya lives in Lisbon", "Tom likes chess"])
    [(x, y, similarity)] = text_memory.near_duplicates(0.99)
    assert {x, y} == {a, b} and similarity == pytest.approx(1.0)
