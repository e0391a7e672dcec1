"""MemCube persistence: round trips, crash safety, validation of damaged folders, no foreign code."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from memos_lab import artifact, registry
from memos_lab.cube import MANIFEST_FILE, SCHEMA_VERSION, MemCube
from memos_lab.errors import ConfigError, DataError, IncompatibleError
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.embedder import HashingEmbedder

QUERIES = ["where does Maya live", "tea", "what did Tom buy last week", "Oslo winter"]


def filled_cube(embedder) -> MemCube:
    memory = GeneralTextMemory(embedder, fusion="rrf", rrf_k=30)
    cube = MemCube.create("alice", memory, cube_id="c1")
    memory.add(
        [
            MemoryItem(
                "Maya lives in Lisbon",
                MemoryMetadata(user="alice", session="s1", tags=("home",), event_time="2024-01-02"),
            ),
            MemoryItem(
                "Tom bought a red bicycle last week", MemoryMetadata(user="alice", session="s2", extra={"k": "v"})
            ),
            "alice likes green tea",
            "Oslo is cold in winter",
        ]
    )
    first = memory.get_all()[0]
    memory.update(first.id, "Maya lives in Porto")
    memory.delete(memory.get_all()[-1].id)
    return cube


def results(cube: MemCube) -> list[list[tuple[str, float]]]:
    return [[(hit.item.id, round(hit.score, 9)) for hit in cube.text.search(query, 5)] for query in QUERIES]


def test_round_trip_keeps_items_metadata_embeddings_and_search_results(tmp_path, embedder):
    cube = filled_cube(embedder)
    cube.dump(tmp_path / "cube")
    loaded = MemCube.load(tmp_path / "cube", embedder)
    assert (loaded.cube_id, loaded.owner) == ("c1", "alice")
    assert isinstance(loaded.text, GeneralTextMemory) and loaded.text.settings.rrf_k == 30
    before = {item.id: item for item in cube.text.get_all({"statuses": ["active", "archived", "deleted"]})}
    after = {item.id: item for item in loaded.text.get_all({"statuses": ["active", "archived", "deleted"]})}
    assert list(before) == list(after)
    for item_id, item in before.items():
        assert after[item_id] == item  # text, metadata (history links, status, tags) and id
        np.testing.assert_array_equal(after[item_id].embedding, item.embedding)
    assert results(loaded) == results(cube)


def test_dump_replaces_an_existing_cube_whole_and_leaves_no_temporary_files(tmp_path, embedder):
    cube = filled_cube(embedder)
    cube.dump(tmp_path / "cube")
    cube.text.add(["a fifth memory"])
    cube.dump(tmp_path / "cube")
    assert len(MemCube.load(tmp_path / "cube", embedder).text) == len(cube.text)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cube"]


def test_a_failing_dump_leaves_the_old_cube_untouched(tmp_path, embedder, monkeypatch):
    cube = filled_cube(embedder)
    cube.dump(tmp_path / "cube")
    cube.text.add(["never written"])

    def crash(folder: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cube.text, "_save_index", crash)
    with pytest.raises(OSError, match="disk full"):
        cube.dump(tmp_path / "cube")
    loaded = MemCube.load(tmp_path / "cube", embedder)
    assert "never written" not in [item.text for item in loaded.text.get_all()]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cube"]


@pytest.fixture
def dumped(tmp_path, embedder) -> Path:
    filled_cube(embedder).dump(tmp_path / "cube")
    return tmp_path / "cube"


def edit_manifest(folder: Path, **changes: object) -> None:
    """Change top-level manifest fields, or the cube's own fields (under "meta") where they live."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        (manifest if key in manifest else manifest["meta"])[key] = value
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_newer_schema_is_refused_clearly(dumped, embedder):
    edit_manifest(dumped, version=SCHEMA_VERSION + 1)
    with pytest.raises(IncompatibleError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        MemCube.load(dumped, embedder)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / "items.sqlite").write_bytes((d / "items.sqlite").read_bytes()[:100]),
            "items.sqlite: truncated",
        ),
        (lambda d: (d / "items.sqlite").unlink(), "items.sqlite: missing"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "manifest.json is missing"),
        (
            lambda d: (d / MANIFEST_FILE).write_text('{"format": "memos_lab.cube", "sche'),
            "manifest.json: not valid JSON",
        ),
        (lambda d: edit_manifest(d, files={"../outside": {"bytes": 1, "sha256": "x"}}), "only relative paths inside"),
        (lambda d: edit_manifest(d, item_count=1), "holds 5 items, the manifest says 1"),
    ],
)
def test_damaged_cube_folders_fail_naming_the_file(dumped, embedder, damage, message):
    damage(dumped)
    with pytest.raises(DataError, match=message):
        MemCube.load(dumped, embedder)


def test_flipped_byte_is_detected(dumped, embedder):
    data = bytearray((dumped / "items.sqlite").read_bytes())
    data[-10] ^= 0xFF
    (dumped / "items.sqlite").write_bytes(bytes(data))
    with pytest.raises(DataError, match="items.sqlite: corrupt"):
        MemCube.load(dumped, embedder)


def test_forged_item_store_is_rejected_even_with_matching_checksums(tmp_path, embedder):
    # Someone re-signs the manifest after writing junk metadata: still a clear error, no code run.
    cube = filled_cube(embedder)
    cube.dump(tmp_path / "cube")
    with sqlite3.connect(tmp_path / "cube" / "items.sqlite") as db:
        db.execute("UPDATE items SET metadata = '{\"colour\": 1}' WHERE position = 0")
    db.close()
    manifest = json.loads((tmp_path / "cube" / MANIFEST_FILE).read_text())
    from memos_lab.artifact.writing import _sha256

    path = tmp_path / "cube" / "items.sqlite"
    manifest["files"]["items.sqlite"] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (tmp_path / "cube" / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="unknown metadata field.*colour"):
        MemCube.load(tmp_path / "cube", embedder)


@pytest.mark.parametrize(
    "target", ["os.system", "subprocess.Popen", "memos_lab.nosuch.Class", "memos_lab.errors.DataError"]
)
def test_manifest_cannot_name_foreign_code(dumped, embedder, target):
    manifest = json.loads((dumped / MANIFEST_FILE).read_text())
    manifest["meta"]["memory_config"]["text"]["_target_"] = target
    (dumped / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleError, match="_target_ names .*may only name the registered memory classes"):
        MemCube.load(dumped, embedder)


@pytest.mark.parametrize(
    "slots, message",
    [
        ({"activation": "builtins.object"}, "slots.activation names 'builtins.object'"),
        (
            {"activation": "memos_lab.cube.MemCube"},
            "slots.activation names 'memos_lab.cube.MemCube'; .* only name the registered activation",
        ),
        ({"plugins": "memos_lab.cube.MemCube"}, "unknown slot 'plugins'"),
    ],
)
def test_slot_classes_must_be_memos_lab_memories(dumped, embedder, slots, message):
    (dumped / next(iter(slots))).mkdir()
    edit_manifest(dumped, slots=slots, children=list(slots))
    with pytest.raises(IncompatibleError, match=message):
        MemCube.load(dumped, embedder, model=object())


def test_other_embedder_is_refused(dumped):
    with pytest.raises(IncompatibleError, match="hashing-256.*hashing-64"):
        MemCube.load(dumped, HashingEmbedder(dim=64))


def embedder_named(name: str, legacy_name: str) -> HashingEmbedder:
    """The test cubes' hashing vectors under a fingerprinted name, as a model embedder would carry."""
    embedder = HashingEmbedder(dim=256)
    embedder.name, embedder.legacy_name = name, legacy_name
    return embedder


def test_a_cube_embedded_with_other_vectors_is_refused_in_one_line(dumped):
    edit_manifest(dumped, embedder={"name": "0123456789abcdef/onnx-int8", "dim": 256})
    with pytest.raises(IncompatibleError, match="embedded with 0123456789abcdef/onnx-int8.*would not match") as error:
        MemCube.load(dumped, embedder_named("fedcba9876543210/onnx-int8", "model-onnx-int8"))
    assert "\n" not in str(error.value)


def test_a_cube_dumped_before_fingerprints_is_accepted_by_its_old_name_with_a_warning(dumped, caplog):
    edit_manifest(dumped, embedder={"name": "model", "dim": 256})  # what the old code recorded for MiniLM
    loaded = MemCube.load(dumped, embedder_named("0123456789abcdef/torch", "model"))
    assert len(loaded.text.get_all()) == 3 and "dump it again to record 0123456789abcdef/torch" in caplog.text
    with pytest.raises(IncompatibleError, match="embedded with model"):
        MemCube.load(dumped, embedder_named("0123456789abcdef/onnx-int8", "model-onnx-int8"))


class _FakeSlot:
    """Stands in for an activation memory: an artifact of its own holding a value, loaded back with the model."""

    def __init__(self, value: str) -> None:
        self.value = value

    def save(self, folder: Path) -> None:
        artifact.write_artifact(folder, "fake", {"value": self.value})

    @classmethod
    def load(cls, folder: Path, model: object) -> _FakeSlot:
        return cls(artifact.read_artifact(folder, "fake").meta["value"] + f"+{model}")


def test_slots_are_saved_through_their_own_save_and_load(tmp_path, embedder, isolated_registry):
    from memos_lab.memory.activation.base import ActivationMemory

    ActivationMemory.register(_FakeSlot)  # an activation memory
    registry.register("activation", "fake")(_FakeSlot)  # and a registered one
    cube = filled_cube(embedder)
    cube.activation = _FakeSlot("kv")
    cube.dump(tmp_path / "cube")
    assert json.loads((tmp_path / "cube" / MANIFEST_FILE).read_text())["meta"]["slots"] == {
        "activation": f"{__name__}._FakeSlot"
    }
    with pytest.raises(ConfigError, match="activation memory, which needs a model"):
        MemCube.load(tmp_path / "cube", embedder)
    loaded = MemCube.load(tmp_path / "cube", embedder, model="m")
    assert loaded.activation.value == "kv+m" and loaded.parametric is None


def test_slot_from_outside_memos_lab_is_not_dumped(tmp_path, embedder):
    cube = filled_cube(embedder)
    cube.parametric = _FakeSlot("x")
    with pytest.raises(ConfigError, match="not a registered parametric component"):
        cube.dump(tmp_path / "cube")
    assert not (tmp_path / "cube").exists() and not os.listdir(tmp_path)
