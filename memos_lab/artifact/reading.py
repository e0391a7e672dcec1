"""Reading: an artifact folder verified against its manifest, and the one fingerprint rule."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memos_lab.artifact.files import (
    _check_name,
    _check_tree,
    _hash_verified,
    _read_bounded,
    _read_verified,
    open_sqlite_readonly,
)
from memos_lab.artifact.lock import remove_stale_staging
from memos_lab.artifact.manifest import FORMAT, MANIFEST, VERSION, FileEntry, _Manifest
from memos_lab.artifact.peft import PEFT_CONFIG, PEFT_INFORMATIONAL, PEFT_PREFIX, PEFT_WEIGHTS, _canonical, _peft_json
from memos_lab.artifact.strict_json import MAX_JSON_BYTES, _first_line, _short_json, check_json, check_plain, parse_json
from memos_lab.artifact.trust import _check_targets
from memos_lab.errors import DataError, IncompatibleError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Fingerprint keys that do not make a model different: the name it was loaded through (`model=hf` and
# `model=smollm2` on the same weights agree). The device is not part of a fingerprint at all.
FINGERPRINT_IGNORED = frozenset({"name"})


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder: its manifest fields, and bounded, checked reads of its listed files."""

    folder: Path
    kind: str
    meta: dict[str, Any]
    fingerprint: dict[str, str] | None
    files: dict[str, FileEntry]
    children: tuple[str, ...]
    stored_version: int  # the version on disk (older ones were migrated on read)

    def where(self, field: str) -> str:
        """'<folder>/manifest.json: <field>', the prefix of every error about a manifest field."""
        return f"{self.folder / MANIFEST}: {field}"

    def check_meta(self, hint: Any) -> None:
        """Type-check `meta` against a TypedDict (exact keys) or any hint `check_json` understands."""
        check_json(self.meta, hint, str(self.folder / MANIFEST), prefix="meta")

    def path(self, name: str) -> Path:
        """The path of a listed file (verified when the artifact was read)."""
        if name not in self.files:
            raise DataError(f"{self.folder / MANIFEST}: file {name!r} is not listed")
        return self.folder / name

    def read_bytes(self, name: str) -> bytes:
        """A listed file's bytes, read no further than its declared size and checked against its sha256."""
        return _read_verified(self.path(name), self.files[name])

    def read_json(self, name: str) -> Any:
        return parse_json(self.read_bytes(name), str(self.folder / name))

    def read_tensors(self, name: str) -> dict[str, Any]:
        """A listed safetensors file as torch tensors (parsed from the verified bytes, never by path)."""
        from safetensors import SafetensorError  # torch is imported only by the kinds that store tensors
        from safetensors.torch import load

        try:
            return load(self.read_bytes(name))
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise DataError(f"{self.folder / name}: unreadable tensors ({_first_line(error)})") from None

    def sqlite(self, name: str, table: str) -> sqlite3.Connection:
        """A listed SQLite file opened read-only and immutable, where `table` must be a real table."""
        return open_sqlite_readonly(self.path(name), table)

    def read_peft_adapter(self, folder: str, expected: Any) -> dict[str, Any]:
        """The weights of the plain peft adapter folder `folder` (adapter_config.json + adapter_model.safetensors,
        as `write_peft_adapter` writes it), named as on the bare model. Its config must say exactly what
        `expected` (the LoraConfig the caller rebuilt from its own manifest fields) says: a key or value we do
        not write (layer_replication, modules_to_save, ...) could change the shared base model, so it is refused.
        The caller attaches `expected`, never the file's config."""
        stored = self.read_json(f"{folder}/{PEFT_CONFIG}")
        where = str(self.folder / folder / PEFT_CONFIG)
        if not isinstance(stored, dict):
            raise DataError(f"{where}: expected an object")
        wanted = _peft_json(expected)
        for key, value in stored.items():
            if key in PEFT_INFORMATIONAL:
                continue
            if key not in wanted:
                raise IncompatibleError(
                    f"{where}: {key}: memos_lab writes no such key; refused (it could change the base model)"
                )
            if _canonical(value) != _canonical(wanted[key]):
                raise IncompatibleError(
                    f"{where}: {key} is {_short_json(value)}, memos_lab writes {_short_json(wanted[key])}; refused"
                )
        tensors = self.read_tensors(f"{folder}/{PEFT_WEIGHTS}")
        return {name.removeprefix(PEFT_PREFIX): tensor for name, tensor in tensors.items()}

    def child(self, name: str) -> Path:
        if name not in self.children:
            raise DataError(f"{self.folder / MANIFEST}: no child artifact {name!r}")
        return self.folder / name


def read_artifact(
    folder: Path,
    kind: str,
    *,
    fingerprint: Mapping[str, str] | None = None,
    targets: Mapping[str, str] | None = None,
    migrate: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
) -> Artifact:
    """Read and verify the artifact of `kind` at `folder`.

    fingerprint: the loaded model's; the artifact must have been made with the same model (`check_fingerprint`).
    targets: manifest paths (e.g. "meta.memory_config.text") where a `_target_` may stand, and the family
        of registered components (`memos_lab.registry`) it must name; a `_target_` anywhere else is refused.
    migrate: turns a version-1 manifest of this kind (a dict without our format) into the current layout.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no {kind} at {folder}: not a folder")
    remove_stale_staging(folder)
    path = folder / MANIFEST
    raw = parse_json(_read_bounded(path, MAX_JSON_BYTES), str(path))
    stored_version = VERSION
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a memos_lab manifest (a JSON object is expected)")
    if raw.get("format") != FORMAT:
        if migrate is None:
            raise IncompatibleError(f"{path}: not a memos_lab artifact of kind {kind!r}")
        raw, stored_version = migrate(raw, folder), 1
        check_plain(raw, str(path))
    version = raw.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise IncompatibleError(
            f"{path}: artifact version {version} is newer than this memos_lab reads ({VERSION}); upgrade memos_lab"
        )
    check_json(raw, _Manifest, str(path))
    if raw["kind"] != kind:
        raise IncompatibleError(f"{path}: holds a {raw['kind']!r} artifact, not a {kind!r}")
    _check_targets(raw, targets or {}, str(path))
    for name in [*raw["files"], *raw["children"]]:
        _check_name(name, f"{path}: files/children entry")
    for name, entry in raw["files"].items():
        if entry["bytes"] < 0 or not _SHA256.match(entry["sha256"]):
            raise DataError(f"{path}: files.{name}: bytes must be >= 0 and sha256 64 hex digits")
    _check_tree(folder, raw["files"], raw["children"])
    for name, entry in raw["files"].items():
        _hash_verified(folder / name, entry)
    for name in raw["children"]:
        if not (folder / name).is_dir():
            raise DataError(f"{folder / name}: child artifact missing")
    if fingerprint is not None:
        check_fingerprint(raw["fingerprint"], fingerprint, str(folder))
    return Artifact(folder, kind, raw["meta"], raw["fingerprint"], raw["files"], tuple(raw["children"]), stored_version)


def check_fingerprint(stored: Mapping[str, str] | None, current: Mapping[str, str], where: str) -> None:
    """The one fingerprint rule: an artifact fits a model whose weights, config, tokenizer, architecture
    and dtype are those it was made with; the name it was loaded through does not matter."""
    if not stored:
        raise IncompatibleError(f"{where}: records no model fingerprint, so it cannot be matched to a model")
    differing = sorted(
        k for k in set(stored) | set(current) if k not in FINGERPRINT_IGNORED and stored.get(k) != current.get(k)
    )
    if differing:
        raise IncompatibleError(
            f"{where}: made with model {stored.get('name')!r}, not with the loaded {current.get('name')!r} "
            f"(differs in {', '.join(differing)}); recompute it with this model"
        )
