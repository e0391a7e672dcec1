"""`python -m memos_lab load memory_type=declarative ...`: plumbing, ownership, readers, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR, LOAD_CONFIG_NAME, validate_overrides
from memos_lab.cube import MemCube
from memos_lab.errors import AccessDeniedError, ConfigError, DataError
from memos_lab.loading.declarative import load
from memos_lab.models.embedder import HashingEmbedder

SMALL = ["embedder=hashing", "dataset.n_conversations=1", "dataset.n_sessions=2", "dataset.turns_per_session=15"]


def compose_load(*overrides: str):
    validate_overrides(overrides, config_name=LOAD_CONFIG_NAME)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(LOAD_CONFIG_NAME, overrides=list(overrides))


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in records))
    return path


def test_jsonl_records_keep_their_metadata_and_reloading_adds_nothing(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"text": "Maya moved to Lisbon", "session": "s1", "time": "2024-01-02", "tags": ["move"], "mood": "happy"},
            {"text": "Tom likes tea", "user": "tom"},
        ],
    )
    cfg = compose_load("user=alice", f"cube_dir={tmp_path / 'cube'}", f"input={source}", "embedder=hashing")
    summary = load(cfg)
    assert (summary["created"], summary["items_added"], summary["items_total"]) == (True, 2, 2)
    cube = MemCube.load(tmp_path / "cube", HashingEmbedder(512))
    assert cube.owner == "alice"
    maya = next(item for item in cube.text.get_all() if "Maya" in item.text)
    meta = maya.metadata
    assert (meta.user, meta.session, meta.event_time, meta.tags) == ("alice", "s1", "2024-01-02", ("move",))
    assert meta.extra == {"mood": "happy"} and meta.source == "in.jsonl:1"
    assert next(item for item in cube.text.get_all() if "Tom" in item.text).metadata.user == "tom"
    again = load(cfg)
    assert (again["created"], again["items_added"], again["items_already_stored"], again["items_total"]) == (
        False,
        0,
        2,
        2,
    )


def test_fast_reader_stores_one_item_per_turn_with_provenance(tmp_path):
    cfg = compose_load("user=bob", f"cube_dir={tmp_path / 'cube'}", "dataset=synthetic_dialogues", *SMALL)
    summary = load(cfg)
    assert summary["reader"] == "fast" and summary["items_added"] == summary["items_read"] == 30
    items = MemCube.load(tmp_path / "cube", HashingEmbedder(512)).text.get_all()
    assert all(item.metadata.source.endswith(item.metadata.extra["turn_id"]) for item in items)
    assert all(item.metadata.event_time and item.metadata.tags[0].startswith("speaker:") for item in items)


def test_fine_reader_links_every_fact_to_its_source_turns(tmp_path):
    cfg = compose_load(
        "user=bob", f"cube_dir={tmp_path / 'cube'}", "dataset=synthetic_dialogues", "reader=fine", "model=tiny_llama",
        "reader.max_new_tokens=24", "reader.window=15", *SMALL,
    )  # fmt: skip
    summary = load(cfg)
    assert summary["reader"] == "fine"
    items = MemCube.load(tmp_path / "cube", HashingEmbedder(512)).text.get_all()
    assert len(items) == summary["items_added"]
    turn_ids = {f"D{s}:{t}" for s in (1, 2) for t in range(1, 16)}
    for item in items:  # the tiny random model writes noise, but the plumbing must hold
        linked = item.metadata.extra["source_turns"].split(";")
        assert linked and set(linked) <= turn_ids, linked
        assert "reader:fine" in item.metadata.tags


def test_a_cube_owned_by_someone_else_is_refused_and_left_unchanged(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "alice's secret"}])
    load(compose_load("user=alice", f"cube_dir={tmp_path / 'cube'}", f"input={source}", "embedder=hashing"))
    before = (tmp_path / "cube" / "items.sqlite").read_bytes()
    with pytest.raises(AccessDeniedError, match="belongs to 'alice'; user 'mallory'"):
        load(compose_load("user=mallory", f"cube_dir={tmp_path / 'cube'}", f"input={source}", "embedder=hashing"))
    assert (tmp_path / "cube" / "items.sqlite").read_bytes() == before


@pytest.mark.parametrize(
    "records, message",
    [
        (['{"text": "ok"}', "{not json"], r"in.jsonl:2: not valid JSON"),
        ([{"txt": "typo"}], r"in.jsonl:1: a record needs a string field 'text'"),
        ([{"text": "x", "tags": "a,b"}], r"in.jsonl:1: 'tags' must be a list"),
        ([{"text": "   "}], r"text must be a non-empty string"),
    ],
)
def test_bad_jsonl_fails_clearly_and_stores_nothing(tmp_path, records, message):
    source = write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises((DataError, Exception), match=message):
        load(compose_load("user=alice", f"cube_dir={tmp_path / 'cube'}", f"input={source}", "embedder=hashing"))
    assert not (tmp_path / "cube").exists()


def test_sources_and_required_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="exactly one source"):
        load(compose_load("user=alice", f"cube_dir={tmp_path / 'c'}", "embedder=hashing"))
    with pytest.raises(ConfigError, match="load needs user="):
        load(compose_load(f"cube_dir={tmp_path / 'c'}", "input=x.jsonl", "embedder=hashing"))
    (tmp_path / "notacube").mkdir()
    (tmp_path / "notacube" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="is not a cube"):
        load(compose_load("user=a", f"cube_dir={tmp_path / 'notacube'}", "input=x.jsonl", "embedder=hashing"))
    assert (tmp_path / "notacube" / "thesis.tex").read_text() == "precious"


def test_load_command_line(tmp_path):
    def memos_lab(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "memos_lab", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    ok = memos_lab(
        "load", "memory_type=declarative", "user=alice", "cube_dir=cube", "dataset=synthetic_dialogues", *SMALL
    )
    assert ok.returncode == 0, ok.stderr
    assert "items_added: 30" in ok.stdout and "storing into cube" in ok.stderr  # summary and progress bar
    bad = memos_lab("load", "memory_type=nosuch", "user=alice", "cube_dir=cube")
    assert bad.returncode == 2 and "unknown choice 'nosuch' for config group 'memory_type'" in bad.stderr
    assert "Traceback" not in bad.stderr
    stranger = memos_lab("load", "user=eve", "cube_dir=cube", "dataset=synthetic_dialogues", *SMALL)
    assert stranger.returncode == 2 and stranger.stderr.strip().splitlines()[-1] == (
        "error: cube at cube belongs to 'alice'; user 'eve' may not write into it"
    )
    assert "load" in memos_lab("--help").stdout and "memory_type" in memos_lab("--help").stdout
