"""A durable MOS: every acknowledged write is in the cube's journal, before any save (issue 24, §3)."""

from __future__ import annotations

import sqlite3

import pytest

from memos_lab.errors import AccessDeniedError, DataError, NotFoundError
from memos_lab.journal import journal_path
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.memory.textual.vector import VectorMemory
from memos_lab.mos import MOS


def open_durable(root, embedder, memory=GeneralTextMemory) -> MOS:
    return MOS(lambda: memory(embedder), root=root, durable=True)


def state(mos: MOS, user: str, cube_id: str) -> dict[str, tuple[str, str]]:
    return {
        item.id: (item.text, item.metadata.status)
        for item in mos.get_all(user, cube_id, {"statuses": ["active", "archived", "deleted"]})
    }


@pytest.mark.parametrize("memory", [GeneralTextMemory, VectorMemory])
def test_every_write_is_there_on_reopening_without_a_save(tmp_path, embedder, memory):
    mos = open_durable(tmp_path, embedder, memory)
    mos.register_user("alice")
    mos.create_cube("alice", cube_id="notes")
    first, second, third = mos.add("alice", "notes", ["alice likes green tea", "alice lives in Oslo", "chess"])
    newer = mos.update("alice", "notes", first, "alice likes black tea")
    merged = mos.merge("alice", "notes", [second, newer.id], "alice drinks black tea in Oslo")
    mos.delete("alice", "notes", third, hard=True)
    expected = state(mos, "alice", "notes")
    assert len(expected) == 4 and expected[merged.id] == ("alice drinks black tea in Oslo", "active")
    again = open_durable(tmp_path, embedder, memory)
    assert state(again, "alice", "notes") == expected
    assert [hit.item.id for hit in again.search("alice", "black tea Oslo", top_k=1)] == [merged.id]


def test_a_save_folds_the_journal_into_the_dump_and_later_writes_still_count(tmp_path, embedder):
    mos = open_durable(tmp_path, embedder)
    mos.register_user("alice")
    mos.create_cube("alice", cube_id="notes")
    mos.add("alice", "notes", ["one", "two"])
    mos.save("alice", "notes")
    rows = sqlite3.connect(journal_path(tmp_path, "notes")).execute("SELECT count(*) FROM items").fetchone()
    assert rows == (0,)  # all in the dump now
    mos.add("alice", "notes", ["three"])
    assert sorted(text for text, _ in state(open_durable(tmp_path, embedder), "alice", "notes").values()) == [
        "one",
        "three",
        "two",
    ]


def test_processes_follow_each_other_s_writes_and_a_checkpoint(tmp_path, embedder):
    first, second = open_durable(tmp_path, embedder), open_durable(tmp_path, embedder)
    first.register_user("alice")
    first.create_cube("alice", cube_id="notes")
    [tea] = second.add("alice", "notes", ["alice likes green tea"])  # second learns of the cube from the registry
    first.delete("alice", "notes", tea)
    second.add("alice", "notes", ["alice lives in Oslo"])
    second.save("alice", "notes")  # forgets the rows first has not read yet: first must read the dump
    first.add("alice", "notes", ["alice plays chess"])
    assert state(first, "alice", "notes") == state(second, "alice", "notes")
    assert sorted(state(first, "alice", "notes").values()) == [
        ("alice likes green tea", "deleted"),
        ("alice lives in Oslo", "active"),
        ("alice plays chess", "active"),
    ]


def test_a_refused_write_leaves_nothing_in_the_journal(tmp_path, embedder):
    mos = open_durable(tmp_path, embedder)
    for user in ("alice", "bob"):
        mos.register_user(user)
    mos.create_cube("alice", cube_id="notes")
    mos.share_cube("alice", "notes", "bob", "read")
    with pytest.raises(AccessDeniedError):
        mos.add("bob", "notes", ["bob was here"])
    with pytest.raises(NotFoundError):
        mos.update("alice", "notes", "no-such-item", "text")
    with pytest.raises(NotFoundError):
        mos.add("alice", "../victim", ["x"])
    assert state(open_durable(tmp_path, embedder), "alice", "notes") == {}
    assert sorted(path.name for path in (tmp_path / "journal").iterdir()) == [
        "notes.sqlite",
        "notes.sqlite-shm",
        "notes.sqlite-wal",
    ]


def test_a_hostile_journal_is_refused_in_one_line(tmp_path, embedder):
    mos = open_durable(tmp_path, embedder)
    mos.register_user("alice")
    mos.create_cube("alice", cube_id="notes")
    mos.add("alice", "notes", ["one"])
    db = sqlite3.connect(journal_path(tmp_path, "notes"))
    db.execute("CREATE TRIGGER grow AFTER INSERT ON items BEGIN INSERT INTO positions VALUES ('x', 1); END")
    db.commit()
    db.close()
    with pytest.raises(DataError, match="not a memos_lab journal") as refused:
        open_durable(tmp_path, embedder).get_all("alice", "notes")
    assert "\n" not in str(refused.value)


def test_a_linked_journal_is_refused(tmp_path, embedder):
    mos = open_durable(tmp_path, embedder)
    mos.register_user("alice")
    (tmp_path / "journal").mkdir()
    (tmp_path / "elsewhere.sqlite").write_bytes(b"")
    journal_path(tmp_path, "notes").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(DataError, match="not a regular file"):
        mos.create_cube("alice", cube_id="notes")
