"""`tree_text` specifics: topics group similar items, parents carry summaries, hard descent prunes."""

from __future__ import annotations

from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.tree_text import TreeTextMemory

CLUSTERS = {
    "tea": ["green tea drink", "black tea drink", "tea drink kyoto", "iced tea drink"],
    "bike": ["red bicycle ride", "bicycle ride chain", "mountain bicycle ride", "bicycle ride helmet"],
}


def tree(embedder, **settings) -> tuple[TreeTextMemory, dict[str, str]]:
    memory = TreeTextMemory(embedder, leaf_size=4, **settings)
    items = [MemoryItem(text, MemoryMetadata(session=topic)) for topic, texts in CLUSTERS.items() for text in texts]
    memory.add(items)
    return memory, {item.text: item.id for item in items}


def test_topics_group_similar_items_and_parents_summarise_them(embedder):
    memory, ids = tree(embedder)
    topic_of_tea = {memory.context(ids[text])[0].node_id for text in CLUSTERS["tea"]}
    topic_of_bike = {memory.context(ids[text])[0].node_id for text in CLUSTERS["bike"]}
    assert len(topic_of_tea) == 1 and len(topic_of_bike) == 1 and topic_of_tea != topic_of_bike
    topic, session = memory.context(ids["green tea drink"])
    assert session.node_id == "session:tea" and set(session.item_ids) == {ids[t] for t in CLUSTERS["tea"]}
    assert topic.summary and all(part in CLUSTERS["tea"] for part in topic.summary.split(" … "))


def test_hard_descent_returns_only_items_under_the_best_topic(embedder):
    memory, _ids = tree(embedder, beam=1)
    hits = memory.search("tea", 8)
    assert {hit.item.text for hit in hits} == set(CLUSTERS["tea"])


def test_new_items_join_their_nearest_topic(embedder):
    memory, ids = tree(embedder)
    [new] = memory.add(["bicycle ride bell"])
    assert memory.context(new)[0].node_id == memory.context(ids["bicycle ride chain"])[0].node_id
