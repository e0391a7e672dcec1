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
    item_id = mos.get_all("alice", "alice-cube")[0].id
    attempts = [
        lambda: mos.add("mallory", "alice-cube", ["injected"]),
        lambda: mos.search("mallory", "alice", cube_ids=["alice-cube"]),
        lambda: mos.get("mallory", "alice-cube", item_id),
        lambda: mos.get_all("mallory", "alice-cube"),
        lambda: mos.update("mallory", "alice-cube", item_id, "changed"),
        lambda: mos.delete("mallory", "alice-cube", item_id),
        lambda: mos.share_cube("mallory", "alice-cube", "mallory", "write"),
        lambda: mos.cube("mallory", "alice-cube"),
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
    with pytest.raises(AccessDeniedError, match="bob.*write"):
        mos.add("bob", "alice-cube", ["bob was here"])


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
