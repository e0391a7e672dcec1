"""MemCube: one user's or agent's container of declarative, activation and parametric memory.

A cube dumps to an artifact folder (see `memos_lab.artifact`, which writes and checks every file):

    manifest.json     kind "cube": owner, how to rebuild each memory, sha256 and size of every file
    items.sqlite      the declarative items: text, metadata, embeddings
    index/            the backend's index files (faiss index, graph, ...), if it keeps any
    activation/       the activation slot, an artifact of its own (`save(folder)` / `load(folder, model)`), if set
    parametric/       the parametric slot, likewise, if set

Loading reads only data (strict JSON, read-only SQLite, index files), confined to the folder and checked
against the manifest, and builds only registered classes (memos_lab.registry): a cube from someone else cannot run code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from memos_lab.artifact import (
    MANIFEST,
    VERSION,
    Artifact,
    check_json,
    read_artifact,
    require_trusted,
    trusted_class,
    write_artifact,
)
from memos_lab.errors import ConfigError, DataError, IncompatibleError, MemosError
from memos_lab.memory.item import new_id, now_iso
from memos_lab.memory.textual.base import TextualMemory
from memos_lab.memory.textual.storage import read_items, write_items
from memos_lab.models.embedder import Embedder

log = logging.getLogger(__name__)

KIND = "cube"
SCHEMA_VERSION = VERSION
MANIFEST_FILE = MANIFEST
ITEMS_FILE = "items.sqlite"
INDEX_DIR = "index"
SLOTS = ("activation", "parametric")  # a slot holds a registered component of the config group of its name
TEXT_TARGET = "meta.memory_config.text"  # the one place a cube manifest names a class by `_target_`


class _EmbedderMeta(TypedDict):
    name: str
    dim: int


class CubeMeta(TypedDict):
    cube_id: str
    owner: str
    created_at: str
    memory_config: dict[str, dict[str, Any]]
    embedder: _EmbedderMeta
    item_count: int
    slots: dict[str, str]


@dataclass
class CubeManifest:
    cube_id: str
    owner: str
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=now_iso)
    # The resolved Hydra config of each memory slot, so a stored cube can be rebuilt as it was.
    memory_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemCube:
    manifest: CubeManifest
    text: TextualMemory
    # Slots filled by the activation (KV cache) and parametric (LoRA) memories when a cube uses them.
    activation: Any | None = None
    parametric: Any | None = None

    @property
    def cube_id(self) -> str:
        return self.manifest.cube_id

    @property
    def owner(self) -> str:
        return self.manifest.owner

    @classmethod
    def create(cls, owner: str, text: TextualMemory, cube_id: str | None = None) -> MemCube:
        return cls(CubeManifest(cube_id=cube_id or new_id(), owner=owner), text)

    # ---- persistence ----------------------------------------------------------------------------

    def dump(self, folder: Path) -> None:
        """Write the cube into `folder` crash-safely; an existing cube there is replaced whole or not at all."""
        slots = {slot: getattr(self, slot) for slot in SLOTS if getattr(self, slot) is not None}
        items = list(self.text._items.values())
        meta = {
            **{key: value for key, value in asdict(self.manifest).items() if key != "schema_version"},
            "memory_config": {
                **self.manifest.memory_config,
                "text": {"_target_": require_trusted(self.text, "memory", "cube text memory"), **self.text.config()},
            },
            "embedder": {"name": self.text.embedder.name, "dim": self.text.embedder.dim},
            "item_count": len(items),
            "slots": {slot: require_trusted(memory, slot, f"cube slot {slot}") for slot, memory in slots.items()},
        }

        def build(staging: Path) -> None:
            write_items(staging / ITEMS_FILE, items)
            (staging / INDEX_DIR).mkdir()
            self.text._save_index(staging / INDEX_DIR)
            for slot, memory in slots.items():
                memory.save(staging / slot)

        write_artifact(Path(folder), KIND, meta, build=build, children=list(slots))

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, model: Any | None = None) -> MemCube:
        """Validate and load a dumped cube; its embeddings must come from `embedder` (same name and size)."""
        artifact = _read(Path(folder))
        meta = artifact.meta
        stored = meta["embedder"]
        if (stored["name"], stored["dim"]) == (embedder.legacy_name, embedder.dim) and "/" not in stored["name"]:
            if embedder.name != embedder.legacy_name:
                log.warning(
                    "%s: dumped before memos_lab recorded embedder fingerprints; accepted by its embedder's name "
                    "%s (dump it again to record %s)",
                    folder,
                    stored["name"],
                    embedder.name,
                )
        elif (stored["name"], stored["dim"]) != (embedder.name, embedder.dim):
            raise IncompatibleError(
                f"{folder}: cube was embedded with {stored['name']} (dim {stored['dim']}); "
                f"the given embedder is {embedder.name} (dim {embedder.dim}): its vectors would not match"
            )
        text_config = dict(meta["memory_config"]["text"])
        memory_class = trusted_class(
            text_config.pop("_target_", None), "memory", artifact.where("memory_config.text._target_")
        )
        try:
            text = memory_class(embedder=embedder, **text_config)
        except (TypeError, ValueError, MemosError) as error:
            raise IncompatibleError(
                f"{artifact.where('memory_config.text')}: does not fit {memory_class.__name__}: {error}"
            ) from None
        items = read_items(artifact.path(ITEMS_FILE), embedder.dim)
        if len(items) != meta["item_count"]:
            raise DataError(
                f"{artifact.folder / ITEMS_FILE}: holds {len(items)} items, the manifest says {meta['item_count']}"
            )
        text._items = {item.id: item for item in items}
        text._load_index(artifact.folder / INDEX_DIR, items)
        fields_ = {key: meta[key] for key in ("cube_id", "owner", "created_at", "memory_config")}
        cube = cls(CubeManifest(**fields_), text)
        classes = {}
        for slot, path in meta["slots"].items():
            if slot not in SLOTS:
                raise IncompatibleError(f"{artifact.where('slots')}: unknown slot {slot!r}; valid: {list(SLOTS)}")
            classes[slot] = trusted_class(path, slot, artifact.where(f"slots.{slot}"))
            if model is None:
                raise ConfigError(f"{folder}: the cube has {slot} memory, which needs a model to load (pass model=...)")
        try:
            for slot, slot_class in classes.items():
                setattr(cube, slot, slot_class.load(artifact.child(slot), model))
        except BaseException:
            # a failed load leaves no adapter on the shared model
            if cube.parametric is not None and hasattr(cube.parametric, "close"):
                cube.parametric.close()
            raise
        return cube


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked fields (`CubeMeta`) of a dumped cube, after verifying every file."""
    return _read(Path(folder)).meta


def _read(folder: Path) -> Artifact:
    if not folder.is_dir():
        raise DataError(f"no cube folder at {folder}")
    if not (folder / MANIFEST_FILE).exists():
        raise DataError(f"{folder} is not a cube: {MANIFEST_FILE} is missing")
    artifact = read_artifact(folder, KIND, targets={TEXT_TARGET: "memory"}, migrate=_from_version_1)
    artifact.check_meta(CubeMeta)
    if "text" not in artifact.meta["memory_config"]:
        raise DataError(f"{artifact.where('memory_config.text')}: missing")
    if set(artifact.meta["slots"]) - set(artifact.children):
        raise DataError(f"{artifact.where('slots')}: names a slot with no child folder listed")
    return artifact


def _from_version_1(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A cube manifest written before the artifact module (format memos_lab.cube, schema_version 1): the
    same fields; its file list also covers the slots' files, which stay checked."""
    if raw.get("format") != "memos_lab.cube" or raw.get("schema_version") != 1:
        version = raw.get("schema_version")
        if raw.get("format") == "memos_lab.cube" and isinstance(version, int) and version > 1:
            raise IncompatibleError(
                f"{folder / MANIFEST_FILE}: cube schema version {version} is newer than this memos_lab reads; upgrade memos_lab"
            )
        raise DataError(f"{folder / MANIFEST_FILE}: not a memos_lab cube manifest")
    check_json(raw.get("slots"), dict[str, str], f"{folder / MANIFEST_FILE}: slots")
    return {
        "format": "memos_lab.artifact",
        "version": VERSION,
        "kind": KIND,
        "created_at": raw.get("created_at"),
        "fingerprint": None,
        "meta": {key: raw[key] for key in CubeMeta.__annotations__ if key in raw},
        "files": raw.get("files"),
        "children": sorted(raw["slots"]),
    }
