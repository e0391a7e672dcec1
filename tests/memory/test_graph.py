"""`graph` specifics: entity extraction, relations, expansion from the query's entities."""

from __future__ import annotations

from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.graph import GraphMemory, extract_entities


def test_names_are_extracted_without_function_words():
    assert extract_entities("Yesterday Caroline met Mel at the LGBTQ support group in New York.") >= {
        "caroline", "mel", "lgbtq", "new york"}  # fmt: skip
    assert "the" not in extract_entities("The cat") and "support" in extract_entities("the support group", terms=True)


def test_graph_links_items_entities_and_session_order(embedder):
    memory = GraphMemory(embedder)
    first, second = memory.add(
        [
            MemoryItem("Caroline met Melanie in Boston", MemoryMetadata(session="s1")),
            MemoryItem("it was sunny", MemoryMetadata(session="s1")),
        ]
    )
    graph = memory.graph
    assert graph.has_edge(f"item:{first}", "entity:caroline") and graph.has_edge(f"item:{first}", f"item:{second}")
    assert graph["entity:caroline"]["entity:boston"]["weight"] == 1
    memory.delete(first, hard=True)
    assert not graph.has_node("entity:caroline")


def test_query_entities_expand_to_co_occurring_ones(embedder):
    memory = GraphMemory(embedder, expansion_weight=0.5)
    memory.add(["Caroline joined Pride Club", "Pride Club meets on Fridays", "Bob likes chess"])
    weights = memory.query_entities("what did caroline do?")
    assert weights["entity:caroline"] == 1.0 and 0 < weights["entity:pride club"] < 1.0
    assert "entity:bob" not in weights
    # The second item shares no word with the query; the graph reaches it through Pride Club.
    texts = [hit.item.text for hit in memory.search("caroline", 3)]
    assert texts.index("Pride Club meets on Fridays") < texts.index("Bob likes chess")


def test_neighbour_weight_lifts_the_turn_after_a_hit(embedder):
    items = [
        MemoryItem(t, MemoryMetadata(session="s"))
        for t in ("where is the zoo", "near the harbour", "unrelated chatter")
    ]
    memory = GraphMemory(embedder, neighbour_weight=1.0, entity_weight=0.0)
    memory.add(items)
    assert [hit.item.text for hit in memory.search("zoo", 2)] == ["where is the zoo", "near the harbour"]
