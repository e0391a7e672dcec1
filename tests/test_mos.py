import pytest

from memos_lab.errors import AccessDeniedError, MemosError, NotFoundError
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.mos import MOS


@pytest.fixture
def mos(embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder))
    for user in ("alice", "bob", "mallory"):
        mos.register_user(user)
    mos.create_cube("alice", cube_id="alice-cube")
    mos.add("alice", "alice-cube", ["alice likes green tea", "alice lives in Oslo"])
    return mos


def test_owner_can_do_everything(mos):
    [hit] = mos.search("alice", "alice lives in which city", top_k=1)
    assert hit.cube_id == "alice-cube" and "Oslo" in hit.item.text
    new = mos.update("alice", "alice-cube", hit.item.id, "alice lives in Bergen")
    assert mos.get("alice", "alice-cube", new.id).text == "alice lives in Bergen"
    mos.delete("alice", "alice-cube", new.id)
    assert len(mos.get_all("alice", "alice-cube")) == 1


def test_stranger_is_refused_every_operation(mos):
    item_id, other_id = [item.id for item in mos.get_all("alice", "alice-cube")]
    mos.create_cube("mallory", cube_id="mallory-cube")
    attempts = [
        lambda: mos.add("mallory", "alice-cube", ["injected"]),
        lambda: mos.search("mallory", "alice", cube_ids=["alice-cube"]),
        lambda: mos.get("mallory", "alice-cube", item_id),
        lambda: mos.get_all("mallory", "alice-cube"),
        lambda: mos.update("mallory", "alice-cube", item_id, "changed"),
        lambda: mos.delete("mallory", "alice-cube", item_id),
        lambda: mos.share_cube("mallory", "alice-cube", "mallory", "write"),
        lambda: mos.unshare_cube("mallory", "alice-cube", "bob"),
        lambda: mos.cube("mallory", "alice-cube"),
        lambda: mos.merge("mallory", "alice-cube", [item_id, other_id]),
        lambda: mos.save("mallory", "alice-cube"),
        lambda: mos.search("mallory", "alice", cube_ids=["alice-cube", "mallory-cube"]),
    ]
    for attempt in attempts:
        with pytest.raises(AccessDeniedError, match="mallory"):
            attempt()
    # An unnamed search covers only readable cubes: none for mallory.
    assert mos.search("mallory", "alice") == []
    assert sorted(item.text for item in mos.get_all("alice", "alice-cube")) == [
        "alice likes green tea",
        "alice lives in Oslo",
    ]


def test_read_share_allows_reading_only(mos):
    mos.share_cube("alice", "alice-cube", "bob", "read")
    assert mos.search("bob", "tea", cube_ids=["alice-cube"])
    [first, second] = mos.get_all("bob", "alice-cube")
    assert mos.get("bob", "alice-cube", first.id) == first
    for attempt in (
        lambda: mos.add("bob", "alice-cube", ["bob was here"]),
        lambda: mos.update("bob", "alice-cube", first.id, "changed"),
        lambda: mos.delete("bob", "alice-cube", first.id),
        lambda: mos.merge("bob", "alice-cube", [first.id, second.id]),
        lambda: mos.save("bob", "alice-cube"),
    ):
        with pytest.raises(AccessDeniedError, match="bob.*write"):
            attempt()
    for attempt in (lambda: mos.cube("bob", "alice-cube"), lambda: mos.share_cube("bob", "alice-cube", "mallory")):
        with pytest.raises(AccessDeniedError, match="bob.*does not own"):
            attempt()
    mos.unshare_cube("alice", "alice-cube", "bob")
    with pytest.raises(AccessDeniedError):
        mos.get_all("bob", "alice-cube")


def test_write_share_allows_writing(mos):
    mos.share_cube("alice", "alice-cube", "bob", "write")
    mos.add("bob", "alice-cube", ["bob was here"])
    assert len(mos.get_all("alice", "alice-cube")) == 3


def test_unknown_users_cubes_and_modes(mos):
    with pytest.raises(NotFoundError, match="eve"):
        mos.search("eve", "tea")
    with pytest.raises(NotFoundError, match="no-such-cube"):
        mos.add("alice", "no-such-cube", ["x"])
    with pytest.raises(MemosError, match="admin"):
        mos.share_cube("alice", "alice-cube", "bob", "admin")
    with pytest.raises(MemosError, match="already registered"):
        mos.create_cube("alice", cube_id="alice-cube")
    for bad in ("../escape", ".hidden", "a/b"):
        with pytest.raises(MemosError, match="cube id"):
            mos.create_cube("alice", cube_id=bad)


def test_team_cube_is_shared_by_agents_beside_their_private_cubes(embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder))
    for agent in ("planner", "coder", "critic", "outsider"):
        mos.register_user(agent)
    team = mos.create_team_cube("planner", ["planner", "coder", "critic"], cube_id="team")
    mos.create_cube("coder", cube_id="coder-private")
    mos.add("coder", "coder-private", ["coder scratch note about the parser"])
    mos.add("coder", team.cube_id, ["the parser must accept unicode"])
    mos.add("critic", team.cube_id, ["the parser rejects emoji: bug"])
    assert {hit.item.text for hit in mos.search("planner", "parser", cube_ids=["team"])} == {
        "the parser must accept unicode", "the parser rejects emoji: bug"}  # fmt: skip
    # An unnamed search covers the team cube and one's own, never another agent's private cube.
    assert {hit.cube_id for hit in mos.search("critic", "parser")} == {"team"}
    assert {hit.cube_id for hit in mos.search("coder", "parser")} == {"team", "coder-private"}
    with pytest.raises(AccessDeniedError):
        mos.search("outsider", "parser", cube_ids=["team"])
    with pytest.raises(AccessDeniedError, match="critic.*coder-private"):
        mos.get_all("critic", "coder-private")
    with pytest.raises(AccessDeniedError, match="coder.*does not own"):
        mos.share_cube("coder", "team", "outsider", "read")


def test_users_shares_and_cubes_survive_a_restart(tmp_path, embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder), root=tmp_path)
    for user in ("alice", "bob", "mallory"):
        mos.register_user(user)
    mos.create_cube("alice", cube_id="alice-cube")
    mos.add("alice", "alice-cube", ["alice likes green tea", "alice lives in Oslo"])
    mos.share_cube("alice", "alice-cube", "bob", "read")
    mos.save("alice", "alice-cube")
    mos.create_cube("bob", cube_id="bob-empty")
    before = [(h.item.id, h.score) for h in mos.search("alice", "tea")]

    reopened = MOS(lambda: GeneralTextMemory(embedder), root=tmp_path)
    assert [(h.item.id, h.score) for h in reopened.search("alice", "tea")] == before
    assert reopened.search("bob", "tea", cube_ids=["alice-cube"])
    assert reopened.get_all("bob", "bob-empty") == []
    with pytest.raises(AccessDeniedError):
        reopened.add("bob", "alice-cube", ["bob was here"])
    with pytest.raises(AccessDeniedError):
        reopened.search("mallory", "tea", cube_ids=["alice-cube"])
    (tmp_path / "registry.json").write_text("{broken")
    with pytest.raises(MemosError, match="registry.json: not valid JSON"):
        MOS(lambda: GeneralTextMemory(embedder), root=tmp_path)


def test_a_search_given_the_query_vector_finds_exactly_what_it_finds_encoding_it(mos, embedder):
    mos.create_cube("bob", cube_id="bob-cube")
    mos.add("bob", "bob-cube", ["bob drinks black tea", "bob lives in Lima", "bob plays chess in Oslo"])
    mos.share_cube("bob", "bob-cube", "alice", "read")
    for query in ("who lives in Oslo", "tea", "chess"):  # hits from both cubes
        expected = mos.search("alice", query, top_k=3)
        given = mos.search("alice", query, top_k=3, query_vector=embedder.encode([query])[0])
        assert [(h.cube_id, h.item.id, h.score) for h in given] == [(h.cube_id, h.item.id, h.score) for h in expected]
    with pytest.raises(AccessDeniedError):  # a vector changes nothing about who may read what
        mos.search("mallory", "tea", cube_ids=["bob-cube"], query_vector=embedder.encode(["tea"])[0])
