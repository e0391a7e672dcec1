"""Two `load` processes into one cube: both sets of items end up stored, or the second fails truthfully."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memos_lab.cube import MemCube
from memos_lab.errors import ConfigError
from memos_lab.loading.declarative import load
from memos_lab.locking import hold_writer_lock
from memos_lab.models.embedder import HashingEmbedder

from .test_declarative_load import compose_load, write_jsonl


def start_load(cube_dir: Path, source: Path, *extra: str) -> subprocess.Popen:
    args = [
        "load",
        "memory_type=declarative",
        "user=alice",
        f"cube_dir={cube_dir}",
        f"input={source}",
        "embedder=hashing",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "memos_lab", *args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_loads_into_one_new_cube_keep_both_sets_of_items(tmp_path):
    sources = [
        write_jsonl(
            tmp_path / f"in{n}.jsonl", [{"text": f"writer {n} note {i}", "source": f"w{n}:{i}"} for i in range(5)]
        )
        for n in (1, 2)
    ]
    writers = [start_load(tmp_path / "cube", source) for source in sources]
    results = [(writer.wait(timeout=240), *writer.communicate()) for writer in writers]
    assert [code for code, _, _ in results] == [0, 0], [err[-500:] for _, _, err in results]
    assert sorted(out.split("items_added: ")[1].split()[0] for _, out, _ in results) == ["5", "5"]
    stored = {item.text for item in MemCube.load(tmp_path / "cube", HashingEmbedder(512)).text.get_all()}
    assert stored == {f"writer {n} note {i}" for n in (1, 2) for i in range(5)}


def test_a_load_that_cannot_get_the_lock_stores_nothing_and_says_who_holds_it(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a note"}])
    cube_dir = tmp_path / "cube"
    with hold_writer_lock(cube_dir, 1):
        writer = start_load(cube_dir, source, "lock_timeout_s=0.2")
        code, out, err = writer.wait(timeout=240), *writer.communicate()
    assert code == 2 and "items_added" not in out
    assert err.strip().count("\n") == 0 and f"held by another writer (pid {os.getpid()}" in err
    assert not cube_dir.exists()


@pytest.mark.parametrize("batch_size", [-1, 0, "abc"])
def test_bad_batch_size_is_refused_before_anything_is_stored(tmp_path, batch_size):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a note"}])
    cfg = compose_load("user=alice", f"cube_dir={tmp_path / 'cube'}", f"input={source}", "embedder=hashing")
    cfg.batch_size = batch_size
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        load(cfg)
    assert not (tmp_path / "cube").exists()


def test_a_full_disk_during_load_is_one_line_exit_2_and_the_cube_is_unchanged(tmp_path):
    import resource

    cube_dir = tmp_path / "cube"
    small = write_jsonl(tmp_path / "small.jsonl", [{"text": f"note {i}"} for i in range(3)])
    load(compose_load("user=alice", f"cube_dir={cube_dir}", f"input={small}", "embedder=hashing"))
    before = {path.name: path.read_bytes() for path in cube_dir.iterdir()}
    big = write_jsonl(tmp_path / "big.jsonl", [{"text": f"a longer note {i} " + "x" * 100} for i in range(3000)])

    def small_files() -> None:  # `ulimit -f 40`: a file may not grow past 40 KiB (EFBIG, as a full disk)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    args = ["load", "memory_type=declarative", "user=alice", f"cube_dir={cube_dir}", f"input={big}", "embedder=hashing"]
    result = subprocess.run(
        [sys.executable, "-m", "memos_lab", *args], capture_output=True, text=True, timeout=240, preexec_fn=small_files
    )
    assert result.returncode == 2, result.stderr[-500:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left") and f"while writing {cube_dir}" in last
    assert last.endswith("what was there is unchanged") and "Traceback" not in result.stderr
    assert {path.name: path.read_bytes() for path in cube_dir.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.jsonl", "cube", "cube.lock", "small.jsonl"]
    assert len(MemCube.load(cube_dir, HashingEmbedder(512)).text.get_all()) == 3
