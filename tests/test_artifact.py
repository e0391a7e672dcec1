"""The artifact module: every rule for untrusted folders, one regression test per finding of issue 17 §1-2,
the one fingerprint rule, version-1 artifacts, staging leftovers and the trusted-class registry."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import torch
import yaml

from memos_lab import artifact
from memos_lab.artifact import file_entry, read_artifact, remove_stale_staging, write_artifact, writer_lock
from memos_lab.cube import MemCube
from memos_lab.errors import ConfigError, DataError, IncompatibleError, MemosError, StorageError
from memos_lab.memory.activation.kv_cache import KVCacheMemory
from memos_lab.memory.parametric.gate import EditGate
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.memory.textual.vector import VectorMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.models.llm import LanguageModel, build_tiny_llama

FIXTURES = Path(__file__).parent / "data" / "fixtures" / "artifacts"
CONF = Path(__file__).parent.parent / "conf"
EMBEDDER = HashingEmbedder(dim=64)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0)


@pytest.fixture
def cube_dir(tmp_path: Path) -> Path:
    memory = VectorMemory(EMBEDDER, index_type="flat")
    cube = MemCube.create("alice", memory, cube_id="c1")
    memory.add(["Maya lives in Lisbon", "Tom bought a red bicycle"])
    cube.dump(tmp_path / "cube")
    return tmp_path / "cube"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, value: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(value))


def resign(folder: Path, name: str) -> None:
    """Record a changed file's size and hash, as a forger would."""
    value = manifest(folder)
    value["files"][name] = file_entry(folder, name)
    write_manifest(folder, value)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message.strip() and isinstance(error.value, MemosError)
    return message


# ---- reads outside the artifact (issue 17, finding 2) ------------------------------------------------


@pytest.mark.parametrize(
    "entry", ["../../etc/passwd", "/etc/passwd", "index/../../x", "./items.sqlite", "a\\b", ".hidden"]
)
def test_file_entries_outside_the_folder_are_refused(cube_dir: Path, entry: str) -> None:
    value = manifest(cube_dir)
    value["files"][entry] = {"bytes": 1, "sha256": "0" * 64}
    write_manifest(cube_dir, value)
    with pytest.raises(DataError, match="only relative paths inside the artifact") as error:
        MemCube.load(cube_dir, EMBEDDER)
    assert "passwd" not in one_line(error) or "etc/passwd'" in str(error.value)  # named, never opened


def test_dev_zero_behind_a_listed_name_is_refused_without_reading_it(cube_dir: Path) -> None:
    (cube_dir / "items.sqlite").unlink()
    (cube_dir / "items.sqlite").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="items.sqlite: a symbolic link"):
        MemCube.load(cube_dir, EMBEDDER)


def test_symlinks_and_unlisted_files_are_refused_even_when_left_out_of_files(cube_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vectors.faiss").write_bytes((cube_dir / "index" / "vectors.faiss").read_bytes())
    value = manifest(cube_dir)
    del value["files"]["index/vectors.faiss"]
    write_manifest(cube_dir, value)
    (cube_dir / "index" / "vectors.faiss").unlink()
    (cube_dir / "index" / "vectors.faiss").symlink_to(outside / "vectors.faiss")
    with pytest.raises(DataError, match="vectors.faiss: a symbolic link"):
        MemCube.load(cube_dir, EMBEDDER)
    (cube_dir / "index" / "vectors.faiss").unlink()
    (cube_dir / "index" / "vectors.faiss").write_bytes(b"stray")
    with pytest.raises(DataError, match="a file the manifest does not list"):
        MemCube.load(cube_dir, EMBEDDER)
    shutil.rmtree(cube_dir / "index")
    (cube_dir / "index").symlink_to(outside)
    with pytest.raises(DataError, match="index: a symbolic link"):
        MemCube.load(cube_dir, EMBEDDER)


def test_a_fifo_is_refused_without_blocking(cube_dir: Path) -> None:
    (cube_dir / "items.sqlite").unlink()
    os.mkfifo(cube_dir / "items.sqlite")
    with pytest.raises(DataError, match="items.sqlite: not a regular file"):
        MemCube.load(cube_dir, EMBEDDER)


def test_a_foreign_cache_with_a_correct_hash_is_refused(lm: LanguageModel, tmp_path: Path) -> None:
    ours, theirs = KVCacheMemory(lm), KVCacheMemory(build_tiny_llama(seed=0, num_layers=3))
    ours.add("maya", "Maya lives in Lisbon")
    theirs.add("maya", "Maya lives in Lisbon")
    ours.save(tmp_path / "ours")
    theirs.save(tmp_path / "theirs")
    shutil.copy(tmp_path / "theirs" / "00000.safetensors", tmp_path / "ours" / "00000.safetensors")
    resign(tmp_path / "ours", "00000.safetensors")
    with pytest.raises(IncompatibleError, match="not the 2 layers of model tiny-llama") as error:
        KVCacheMemory.load(tmp_path / "ours", lm)
    one_line(error)


# ---- strict parsing (issue 17, finding 7) ------------------------------------------------------------


def test_items_as_a_recursive_view_is_refused_not_run(cube_dir: Path) -> None:
    with closing(sqlite3.connect(cube_dir / "items.sqlite")) as db, db:
        db.execute("ALTER TABLE items RENAME TO stored")
        db.execute(
            "CREATE VIEW items AS WITH RECURSIVE r(position, id, text, metadata, embedding) AS "
            "(SELECT 0, 'a', 'b', '{}', NULL UNION ALL SELECT position + 1, id, text, metadata, embedding FROM r) SELECT * FROM r"
        )
    resign(cube_dir, "items.sqlite")
    with pytest.raises(DataError, match="'items' is a view, not a table"):
        MemCube.load(cube_dir, EMBEDDER)


def test_deep_json_is_one_line(cube_dir: Path) -> None:
    (cube_dir / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataError, match="nested deeper than") as error:
        MemCube.load(cube_dir, EMBEDDER)
    one_line(error)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("files", ["items.sqlite"], "files: expected an object, got a list"),
        ("children", "activation", "children: expected a list of strings, got a string"),
        ("meta.item_count", "2", "meta.item_count: expected an integer, got a string"),
        ("meta.embedder.dim", True, "meta.embedder.dim: expected an integer, got a boolean"),
        ("meta.owner", "\ud800", "lone surrogate"),
        ("meta.slots", {"activation": 5}, "meta.slots.activation: expected a string, got an integer"),
        ("meta.extra", 1, "meta.extra: unknown field"),
        ("fingerprint", 1e999, "only finite numbers"),
    ],
)
def test_wrong_json_types_are_one_line_naming_the_field(
    cube_dir: Path, field: str, value: object, message: str
) -> None:
    data = manifest(cube_dir)
    node = data
    *parents, last = field.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    (cube_dir / "manifest.json").write_text(json.dumps(data).replace("Infinity", "1e999"))
    with pytest.raises(DataError, match=message) as error:
        MemCube.load(cube_dir, EMBEDDER)
    assert "manifest.json" in one_line(error)


def test_item_metadata_of_the_wrong_type_is_one_line(cube_dir: Path) -> None:
    with closing(sqlite3.connect(cube_dir / "items.sqlite")) as db, db:
        db.execute("""UPDATE items SET metadata = json_set(metadata, '$.tags', 5)""")
    resign(cube_dir, "items.sqlite")
    with pytest.raises(DataError, match="metadata.tags: expected a list of strings, got an integer"):
        MemCube.load(cube_dir, EMBEDDER)


def test_a_faiss_file_of_another_index_type_is_refused(cube_dir: Path, tmp_path: Path) -> None:
    other = VectorMemory(EMBEDDER, index_type="hnsw")
    cube = MemCube.create("alice", other, cube_id="c1")
    other.add(["Maya lives in Lisbon", "Tom bought a red bicycle"])
    cube.dump(tmp_path / "hnsw")
    shutil.copy(tmp_path / "hnsw" / "index" / "vectors.faiss", cube_dir / "index" / "vectors.faiss")
    resign(cube_dir, "index/vectors.faiss")
    with pytest.raises(DataError, match="a faiss IndexHNSWFlat index, not the flat index"):
        MemCube.load(cube_dir, EMBEDDER)


def test_a_stored_gate_cannot_name_a_model_folder(lm: LanguageModel, tmp_path: Path) -> None:
    gate = EditGate({"_target_": "memos_lab.models.embedder.HashingEmbedder", "dim": 64})
    LoRAMemory(lm, gate=gate, adapter="a", rank=2, target_modules=["q_proj"]).save(tmp_path / "m")
    for adapter_key in list(lm.model.peft_config):
        lm.model.delete_adapter(adapter_key)
    value = manifest(tmp_path / "m")
    value["meta"]["gate"]["embedder"] = {
        "_target_": "memos_lab.models.embedder.SentenceTransformerEmbedder",
        "model_path": str(tmp_path),
    }
    write_manifest(tmp_path / "m", value)
    with pytest.raises(IncompatibleError, match="embedder.model_path: a stored gate cannot name a path"):
        LoRAMemory.load(tmp_path / "m", lm)


# ---- the trusted-class registry ----------------------------------------------------------------------


def test_every_backend_in_conf_is_a_registered_class() -> None:
    for family in ("memory", "parametric", "activation", "embedder"):
        for file in sorted((CONF / family).glob("*.yaml")):
            target = (yaml.safe_load(file.read_text()) or {}).get("_target_")
            if target is not None:
                assert isinstance(artifact.trusted_class(target, family, str(file)), type), file


@pytest.mark.parametrize(
    "target", ["builtins.print", "os.makedirs", "memos_lab.fuzz.Sentinel", "memos_lab.cube.MemCube", 5]
)
def test_a_class_outside_the_registry_is_refused_even_inside_memos_lab(target: object) -> None:
    with pytest.raises(IncompatibleError, match="may only name the registered embedder classes HashingEmbedder"):
        artifact.trusted_class(target, "embedder", "x")


def test_a_gate_config_builds_only_registered_embedders_with_plain_settings() -> None:
    with pytest.raises(MemosError, match="may only name the registered embedder classes"):
        EditGate({"_target_": "builtins.print"})
    with pytest.raises(ConfigError, match="gate.embedder.dim: must be a plain value"):
        EditGate({"_target_": "memos_lab.models.embedder.HashingEmbedder", "dim": {"_target_": "os.getpid"}})
    with pytest.raises(ConfigError, match="gate.embedder.shell: not a setting of HashingEmbedder"):
        EditGate({"_target_": "memos_lab.models.embedder.HashingEmbedder", "shell": "x"})


# ---- one fingerprint rule -----------------------------------------------------------------------------


def test_the_name_a_model_was_loaded_through_does_not_matter_but_its_weights_do(tmp_path: Path) -> None:
    lm = build_tiny_llama(seed=0)
    renamed = LanguageModel(model=build_tiny_llama(seed=0).model, tokenizer=lm.tokenizer, name="loaded-through-hf")
    kv = KVCacheMemory(lm)
    kv.add("maya", "Maya lives in Lisbon")
    kv.save(tmp_path / "kv")
    assert KVCacheMemory.load(tmp_path / "kv", renamed).keys() == ["maya"]
    lora = LoRAMemory(lm, adapter="a", rank=2, target_modules=["q_proj"])
    lora.save(tmp_path / "lora")
    lora.close()
    LoRAMemory.load(tmp_path / "lora", renamed).close()
    write_artifact(tmp_path / "stats", "stats", {"n": 1}, files={"cov.bin": b"\x00" * 8}, fingerprint=lm.fingerprint())
    assert (
        read_artifact(tmp_path / "stats", "stats", fingerprint=renamed.fingerprint()).read_bytes("cov.bin")
        == b"\x00" * 8
    )
    with pytest.raises(IncompatibleError, match="differs in .*weights_sha256"):
        read_artifact(tmp_path / "stats", "stats", fingerprint=build_tiny_llama(seed=1).fingerprint())


# ---- version-1 artifacts ------------------------------------------------------------------------------


def test_a_version_1_cube_with_both_slots_loads_unchanged_and_dumps_as_version_2(
    lm: LanguageModel, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "cube_v1", old)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    cube = MemCube.load(old, EMBEDDER, model=lm)
    try:
        assert sorted(item.text for item in cube.text.get_all()) == ["Maya lives in Lisbon", "Tom bought a red bicycle"]
        assert cube.activation.keys() == ["maya"] and cube.parametric.edits("alice")[0].target_new == "Oslo"
        assert {
            p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()
        } == before  # nothing rewritten
        cube.dump(tmp_path / "new")
    finally:
        cube.parametric.close()
    assert manifest(tmp_path / "new")["version"] == artifact.VERSION
    again = MemCube.load(tmp_path / "new", EMBEDDER, model=lm)
    again.parametric.close()
    assert torch.equal(again.activation.get("maya").keys[0], cube.activation.get("maya").keys[0])


# ---- writing, leftovers, lock -------------------------------------------------------------------------


def test_a_folder_that_is_not_an_artifact_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an empty folder or a memos_lab artifact"):
        write_artifact(tmp_path / "mine", "stats", {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_writing_refuses_what_a_reader_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lone surrogate"):
        write_artifact(tmp_path / "a", "stats", {"note": "\udc80"})
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())


def test_opening_removes_only_our_stale_staging_and_only_when_no_writer_holds_the_lock(cube_dir: Path) -> None:
    stale = [cube_dir.with_name(".cube.abcd1234.tmp"), cube_dir.with_name(".cube.x1y2z3w4.tmp.old")]
    for path in stale:
        path.mkdir()
    others = [
        cube_dir.with_name(".cube.x.abcd1234.tmp"),
        cube_dir.with_name(".cubes.abcd1234.tmp"),
        cube_dir.with_name("cube.abcd1234.tmp"),
    ]
    for path in others:
        path.mkdir()
    with writer_lock(cube_dir, timeout=0):
        MemCube.load(cube_dir, EMBEDDER)  # a writer is busy: its staging is not stale
        assert all(path.exists() for path in stale)
        assert remove_stale_staging(cube_dir, held=True) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in others)
    stale[0].mkdir()
    MemCube.load(cube_dir, EMBEDDER)
    assert not stale[0].exists()


def test_an_interrupted_dump_leaves_only_what_the_next_open_removes(
    cube_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cube = MemCube.load(cube_dir, EMBEDDER)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # as if killed before cleaning up

    def killed(folder: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cube.text, "_save_index", killed)
    with pytest.raises(KeyboardInterrupt):
        cube.dump(cube_dir)
    monkeypatch.undo()
    assert len(artifact.staging_leftovers(cube_dir)) == 1
    MemCube.load(cube_dir, EMBEDDER)
    assert artifact.staging_leftovers(cube_dir) == []


def test_reads_stop_at_the_declared_size(tmp_path: Path) -> None:
    write_artifact(tmp_path / "a", "stats", {}, files={"x.bin": b"0123456789"})
    art = read_artifact(tmp_path / "a", "stats")
    with (tmp_path / "a" / "x.bin").open("ab") as stream:
        stream.write(b"more")
    with pytest.raises(DataError, match="truncated or altered"):
        art.read_bytes("x.bin")
    assert hashlib.sha256(b"0123456789").hexdigest() == art.files["x.bin"]["sha256"]


@pytest.mark.parametrize("category", [[], ["a", 1, None], True])
def test_a_locomo_category_of_the_wrong_type_is_one_line(tmp_path: Path, category: object) -> None:
    from memos_lab.data.locomo import load_locomo

    records = json.loads((Path(__file__).parent / "data" / "fixtures" / "locomo_tiny.json").read_text())
    records[0]["qa"][1]["category"] = category  # found by the fuzzer: a raw TypeError (unhashable list)
    (tmp_path / "locomo.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match="qa 1: unknown category") as error:
        list(load_locomo(str(tmp_path / "locomo.json"), cache_dir=str(tmp_path / "cache")))
    one_line(error)


@pytest.mark.parametrize("errno_value", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_full_disk_is_one_line_and_the_old_folder_stays(tmp_path, errno_value):
    artifact.write_artifact(tmp_path / "a", "note", {"v": 1})

    def fill(staging):
        raise OSError(errno_value, os.strerror(errno_value))

    with pytest.raises(StorageError, match=f"^no space left while writing {tmp_path / 'a'} .*unchanged$"):
        artifact.write_artifact(tmp_path / "a", "note", {"v": 2}, build=fill)
    assert artifact.read_artifact(tmp_path / "a", "note").meta == {"v": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]
