"""A persistent MOS root shared by several writers, sharees and hostile registries (issue 17, §4-6)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from memos_lab.errors import AccessDeniedError, BusyError, ConfigError, DataError
from memos_lab.locking import lock_file
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.mos import MOS


def open_root(root, embedder, **kwargs) -> MOS:
    return MOS(lambda: GeneralTextMemory(embedder), root=root, **kwargs)


def test_two_processes_changing_one_registry_lose_nothing(tmp_path, embedder):
    first, second = open_root(tmp_path, embedder), open_root(tmp_path, embedder)  # both read the same (empty) root
    first.register_user("alice")
    second.register_user("bob")  # applied to the registry on disk, which already holds alice
    first.create_cube("alice", cube_id="a")
    second.create_cube("bob", cube_id="b")
    second.share_cube("bob", "b", "alice", "read")
    first.share_cube("alice", "a", "bob", "write")
    assert set(second.readable_cubes("bob")) == {"a", "b"}  # the other process's share is followed at once
    registry = json.loads((tmp_path / "registry.json").read_text())
    assert registry["users"] == ["alice", "bob"]
    assert {cube: entry["shares"] for cube, entry in registry["cubes"].items()} == {
        "a": {"bob": "write"},
        "b": {"alice": "read"},
    }
    first.unshare_cube("alice", "a", "bob")
    with pytest.raises(AccessDeniedError):
        second.add("bob", "a", ["bob was here"])  # revoked in another process: refused here too


def test_a_save_over_another_process_s_save_is_refused_and_loses_nothing(tmp_path, embedder):
    setup = open_root(tmp_path, embedder)
    setup.register_user("alice")
    setup.create_cube("alice", cube_id="notes")
    setup.add("alice", "notes", ["alice likes green tea"])
    setup.save("alice", "notes")
    first, second = open_root(tmp_path, embedder), open_root(tmp_path, embedder)
    first.add("alice", "notes", ["alice lives in Oslo"])
    second.add("alice", "notes", ["alice plays chess"])
    first.save("alice", "notes")
    with pytest.raises(BusyError, match="another process saved cube 'notes'"):
        second.save("alice", "notes")
    texts = {item.text for item in open_root(tmp_path, embedder).get_all("alice", "notes")}
    assert texts == {"alice likes green tea", "alice lives in Oslo"}
    assert {item.text for item in setup.get_all("alice", "notes")} == texts  # an unchanged copy follows the disk


@pytest.mark.parametrize(
    "cube_id", ["../../victim", "x" * 300, ".hidden", "a/b"], ids=["traversal", "too-long", "dot", "separator"]
)
def test_bad_cube_ids_are_refused_on_write_and_on_read(tmp_path, embedder, cube_id):
    mos = open_root(tmp_path, embedder)
    mos.register_user("alice")
    with pytest.raises(ConfigError, match="cube id"):
        mos.create_cube("alice", cube_id=cube_id)
    (tmp_path / "registry.json").write_text(
        json.dumps({"users": ["alice"], "cubes": {cube_id: {"owner": "alice", "shares": {}}}})
    )
    with pytest.raises(DataError, match="registry.json: cube id") as refused:
        open_root(tmp_path, embedder)
    assert "\n" not in str(refused.value)
    assert not (tmp_path.parent / "victim").exists()


def test_a_write_sharee_cannot_store_a_bad_embedding_or_change_stored_items(tmp_path, embedder):
    mos = open_root(tmp_path, embedder)
    for user in ("alice", "bob", "carol"):
        mos.register_user(user)
    mos.create_cube("alice", cube_id="c")
    [item_id] = mos.add("alice", "c", ["alice likes green tea"])
    mos.share_cube("alice", "c", "bob", "write")
    mos.share_cube("alice", "c", "carol", "read")
    with pytest.raises(DataError, match="embedding"):
        mos.add("bob", "c", [MemoryItem("bad", embedding=np.ones(embedder.dim + 1, dtype=np.float32))])
    held_by_bob = mos.get("bob", "c", item_id)
    mos.unshare_cube("alice", "c", "bob")
    with pytest.raises(AttributeError):  # frozen: neither the unshared writer nor a reader can change it
        held_by_bob.text = "alice hates tea"
    with pytest.raises(TypeError):
        mos.get("carol", "c", item_id).metadata.extra["x"] = "y"
    mos.save("alice", "c")
    reopened = open_root(tmp_path, embedder)
    assert [hit.item.text for hit in reopened.search("alice", "tea")] == ["alice likes green tea"]


def test_a_second_writer_gives_up_after_the_timeout_naming_the_holder(tmp_path, embedder):
    open_root(tmp_path, embedder).register_user("alice")
    hold = (
        "import sys, time; from pathlib import Path; from memos_lab.locking import hold_writer_lock\n"
        "with hold_writer_lock(Path(sys.argv[1]), 5):\n    time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)])
    try:
        deadline = time.monotonic() + 20
        while f"pid {holder.pid}" not in (lock_file(tmp_path).read_text() if lock_file(tmp_path).exists() else ""):
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        with pytest.raises(BusyError, match=f"held by another writer \\(pid {holder.pid} on .*gave up after 0.2 s"):
            open_root(tmp_path, embedder, lock_timeout_s=0.2)
    finally:
        holder.kill()
        holder.wait()
    assert open_root(tmp_path, embedder, lock_timeout_s=5).readable_cubes("alice") == []  # freed by the kill
