"""MemCube: one user's or agent's container of declarative, activation and parametric memory.

A cube dumps to a folder:

    manifest.json     schema version, owner, how to rebuild each memory, sha256 and size of every file
    items.sqlite      the declarative items: text, metadata, embeddings
    index/            the backend's index files (faiss index, graph, ...), if it keeps any
    activation/       the activation slot's own files (`save(folder)` / `load(folder, model)`), if set
    parametric/       the parametric slot's own files, if set

Loading reads only data (JSON, SQLite, index files) and imports only `memos_lab.` classes, so a cube from
someone else cannot run their code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memos_lab.atomic import atomic_write_dir
from memos_lab.errors import ConfigError, DataError, IncompatibleError
from memos_lab.memory.item import new_id, now_iso
from memos_lab.memory.textual.base import TextualMemory
from memos_lab.memory.textual.storage import read_items, write_items
from memos_lab.models.embedder import Embedder

SCHEMA_VERSION = 1
FORMAT = "memos_lab.cube"
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.sqlite"
INDEX_DIR = "index"
SLOT_BASES = {  # slot -> the interface its class must implement
    "activation": "memos_lab.memory.activation.base.ActivationMemory",
    "parametric": "memos_lab.memory.parametric.base.ParametricMemory",
}
TRUSTED_PREFIX = "memos_lab."  # the only classes a stored cube may name


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
        atomic_write_dir(Path(folder), self._write)

    def _write(self, folder: Path) -> None:
        items = list(self.text._items.values())
        write_items(folder / ITEMS_FILE, items)
        (folder / INDEX_DIR).mkdir()
        self.text._save_index(folder / INDEX_DIR)
        slots = {}
        for slot in SLOT_BASES:
            memory = getattr(self, slot)
            if memory is not None:
                slots[slot] = _trusted_class_path(memory, slot)
                (folder / slot).mkdir()
                memory.save(folder / slot)
        manifest = {
            "format": FORMAT,
            **asdict(self.manifest),
            "schema_version": SCHEMA_VERSION,
            "memory_config": {**self.manifest.memory_config, "text": {"_target_": _class_path(self.text), **self.text.config()}},
            "embedder": {"name": self.text.embedder.name, "dim": self.text.embedder.dim},
            "item_count": len(items),
            "slots": slots,
            "files": {
                path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
                for path in sorted(folder.rglob("*"))
                if path.is_file()
            },
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, model: Any | None = None) -> MemCube:
        """Validate and load a dumped cube; its embeddings must come from `embedder` (same name and size)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        stored = manifest["embedder"]
        if (stored.get("name"), stored.get("dim")) != (embedder.name, embedder.dim):
            raise IncompatibleError(
                f"{folder}: cube was embedded with {stored.get('name')} (dim {stored.get('dim')}); "
                f"the given embedder is {embedder.name} (dim {embedder.dim})"
            )
        text_config = dict(manifest["memory_config"]["text"])
        memory_class = _trusted_class(text_config.pop("_target_"), "memory_config.text._target_", folder)
        if not issubclass(memory_class, TextualMemory):
            raise IncompatibleError(f"{folder / MANIFEST_FILE}: memory_config.text names {memory_class.__name__}, not a TextualMemory")
        try:
            text = memory_class(embedder=embedder, **text_config)
        except TypeError as error:
            raise IncompatibleError(f"{folder}/{MANIFEST_FILE}: memory_config.text does not fit {memory_class.__name__}: {error}") from None
        items = read_items(folder / ITEMS_FILE, embedder.dim)
        if len(items) != manifest["item_count"]:
            raise DataError(f"{folder / ITEMS_FILE}: holds {len(items)} items, the manifest says {manifest['item_count']}")
        text._items = {item.id: item for item in items}
        text._load_index(folder / INDEX_DIR, items)
        fields_ = {key: manifest[key] for key in ("cube_id", "owner", "schema_version", "created_at", "memory_config")}
        cube = cls(CubeManifest(**fields_), text)
        for slot, path in manifest["slots"].items():
            if slot not in SLOT_BASES:
                raise IncompatibleError(f"{folder / MANIFEST_FILE}: unknown slot {slot!r}; valid: {list(SLOT_BASES)}")
            slot_class = _trusted_class(path, f"slots.{slot}", folder)
            if not issubclass(slot_class, _trusted_class(SLOT_BASES[slot], "slot base", folder)):
                raise IncompatibleError(f"{folder / MANIFEST_FILE}: slots.{slot} names {path}, not a {SLOT_BASES[slot]}")
            if model is None:
                raise ConfigError(f"{folder}: the cube has {slot} memory, which needs a model to load (pass model=...)")
            setattr(cube, slot, slot_class.load(folder / slot, model))
        return cube


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a dumped cube, after checking its schema and that every file is whole."""
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataError(f"no cube folder at {folder}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder} is not a cube: {MANIFEST_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: corrupt manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a memos_lab cube manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise DataError(f"{path}: schema_version missing or not an integer")
    if version > SCHEMA_VERSION:
        raise IncompatibleError(
            f"{path}: cube schema version {version} is newer than this memos_lab supports ({SCHEMA_VERSION}); upgrade memos_lab"
        )
    required = ("cube_id", "owner", "created_at", "memory_config", "embedder", "item_count", "slots", "files")
    missing = [key for key in required if key not in manifest]
    if missing or "text" not in manifest.get("memory_config", {}):
        raise DataError(f"{path}: missing key(s) {missing or ['memory_config.text']}")
    for name, expected in manifest["files"].items():
        file = folder / name
        if not file.resolve().is_relative_to(folder.resolve()):
            raise DataError(f"{path}: file entry {name!r} points outside the cube")
        if not file.is_file():
            raise DataError(f"{file}: missing from the cube")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise DataError(f"{file}: truncated or altered ({size} bytes, the manifest says {expected['bytes']})")
        if _sha256(file) != expected["sha256"]:
            raise DataError(f"{file}: corrupt (sha256 differs from the manifest)")
    return manifest


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _trusted_class_path(obj: object, slot: str) -> str:
    path = _class_path(obj)
    if not path.startswith(TRUSTED_PREFIX):
        raise ConfigError(f"cube slot {slot}: class {path} is not part of memos_lab; only memos_lab classes can be stored")
    return path


def _trusted_class(path: object, key: str, folder: Path) -> type:
    """Import a class a manifest names, but only from memos_lab: a cube must not choose code to run."""
    where = f"{folder / MANIFEST_FILE}: {key}"
    if not isinstance(path, str) or not path.startswith(TRUSTED_PREFIX) or "." not in path:
        raise IncompatibleError(f"{where} names {path!r}; only {TRUSTED_PREFIX}* classes are loaded")
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise IncompatibleError(f"{where} names {path}, which this memos_lab does not have") from None
    if not isinstance(found, type):
        raise IncompatibleError(f"{where} names {path}, which is not a class")
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
