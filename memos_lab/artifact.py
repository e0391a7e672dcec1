"""One way to persist: every folder memos_lab writes and reads back is an *artifact*, written and read here.

An artifact is a folder with a `manifest.json`:

    {"format": "memos_lab.artifact", "version": 2, "kind": "cube" | "kv_cache" | "lora" | "stats" | ...,
     "created_at": ISO time, "fingerprint": the model's identity or null, "meta": the kind's own fields,
     "files": {"relative/path": {"bytes": n, "sha256": hex}}, "children": ["sub/folder", ...]}

`children` are sub-folders that are artifacts of their own (a cube's activation and parametric slots).

Writing (`write_artifact`) builds the folder beside its target and swaps it in atomically (crash-safe).
Reading (`read_artifact`) treats every byte as written by a stranger:
- the manifest is size-bounded, strict JSON (depth, duplicate keys, NaN, lone surrogates refused), type-checked;
- every path is relative and confined to the folder; no symbolic link and no special file is accepted;
- only the listed files (and children) may exist; each is read no further than its declared size and must
  match its sha256;
- a `_target_` may appear only where the kind declares one, and any class it or a class field names must be
  one of memos_lab's registered classes (`TRUSTED_CLASSES`): loading never runs code chosen by data;
- the model fingerprint is compared by one rule (`check_fingerprint`).
Every refusal is one line (DataError / IncompatibleError) naming the file and the field.

Writers of one target serialise on `writer_lock(target)`, a `filelock` lock file `<target>.lock` beside it;
`remove_stale_staging(target)` deletes the staging folders an interrupted write left, only when no writer
holds that lock.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import stat
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import quote

from filelock import FileLock, Timeout

from memos_lab.errors import ConfigError, DataError, IncompatibleError, StorageError

FORMAT = "memos_lab.artifact"
VERSION = 2  # version 1: the per-kind manifests written before this module (migrated on read)
MANIFEST = "manifest.json"
MAX_JSON_BYTES = 64 * 2**20  # a manifest or JSON payload file
MAX_JSON_DEPTH = 32
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Every class a stored artifact may name, by family. A new backend adds one line here; a test checks that
# every `_target_` under conf/memory, conf/parametric, conf/activation and conf/embedder is listed.
TRUSTED_CLASSES: dict[str, tuple[str, ...]] = {
    "textual": (
        "memos_lab.memory.textual.general_text.GeneralTextMemory",
        "memos_lab.memory.textual.vector.VectorMemory",
        "memos_lab.memory.textual.tree_text.TreeTextMemory",
        "memos_lab.memory.textual.graph.GraphMemory",
    ),
    "activation": ("memos_lab.memory.activation.kv_cache.KVCacheMemory",),
    "parametric": (
        "memos_lab.memory.parametric.lora.LoRAMemory",
        "memos_lab.memory.parametric.rome.ROMEMemory",
        "memos_lab.memory.parametric.memit.MEMITMemory",
        "memos_lab.memory.parametric.alphaedit.AlphaEditMemory",
    ),
    "embedder": (
        "memos_lab.models.embedder.HashingEmbedder",
        "memos_lab.models.embedder.SentenceTransformerEmbedder",
        "memos_lab.models.embedder.OnnxEmbedder",
    ),
}
# Fingerprint keys that do not make a model different: the name it was loaded through (`model=hf` and
# `model=smollm2` on the same weights agree). The device is not part of a fingerprint at all.
FINGERPRINT_IGNORED = frozenset({"name"})


class FileEntry(TypedDict):
    bytes: int
    sha256: str


class _Manifest(TypedDict):
    format: Literal["memos_lab.artifact"]
    version: int
    kind: str
    created_at: str
    fingerprint: dict[str, str] | None
    meta: dict[str, Any]
    files: dict[str, FileEntry]
    children: list[str]


# ---- reading ------------------------------------------------------------------------------------------


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
        of `TRUSTED_CLASSES` it must name; a `_target_` anywhere else is refused.
    migrate: turns a version-1 manifest of this kind (a dict without our format) into the current layout.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no {kind} at {folder}: not a folder")
    remove_stale_staging(folder)
    path = folder / MANIFEST
    raw = parse_json(read_bounded(path, MAX_JSON_BYTES), str(path))
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


def file_entry(folder: Path, name: str) -> FileEntry:
    """The size and sha256 of a file as it is now: for migrating version-1 manifests that recorded none.
    The same checks apply (confined name, no links, a regular file)."""
    _check_name(name, f"{folder}: file")
    path = folder / name
    for parent in reversed(Path(name).parents[:-1]):
        if (folder / parent).is_symlink():
            raise DataError(f"{folder / parent}: a symbolic link; artifacts never hold links")
    with _open_regular(path) as (handle, size):
        digest = hashlib.sha256()
        for block in _read_exact(handle, size, path):
            digest.update(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft names weights relative to a PeftModel wrapper; ours sit on the bare model
# adapter_config.json keys that only describe where the adapter came from; nothing builds a model from them
PEFT_INFORMATIONAL = frozenset({"base_model_name_or_path", "revision", "peft_version", "inference_mode"})


def write_peft_adapter(folder: Path, config: Any, tensors: Mapping[str, Any]) -> None:
    """A plain peft adapter folder (loadable by `PeftModel.from_pretrained`) inside an artifact's staging:
    `tensors` named as on the bare model, `config` a LoraConfig."""
    from safetensors.torch import save_file  # torch is imported only by the kinds that store tensors

    folder = Path(folder)
    folder.mkdir(parents=True)
    save_file(
        {PEFT_PREFIX + name: t.detach().contiguous().clone() for name, t in tensors.items()}, str(folder / PEFT_WEIGHTS)
    )
    (folder / PEFT_CONFIG).write_text(json.dumps(_peft_json(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _peft_json(config: Any) -> dict[str, Any]:
    """A peft config as the JSON its save_pretrained writes (sets become sorted lists)."""
    return json.loads(
        json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v))
    )


def _canonical(value: Any) -> str:
    """Order-free form of a config value: peft keeps target modules as a set, so list order means nothing."""
    if isinstance(value, list):
        return json.dumps(sorted(_canonical(item) for item in value))
    return json.dumps(value, sort_keys=True)


# ---- trusted classes ----------------------------------------------------------------------------------


def trusted_class(path: object, family: str, where: str) -> type[Any]:
    """The class `path` names, only if it is a registered memos_lab class of `family`: data never picks code."""
    allowed = TRUSTED_CLASSES[family]
    if not isinstance(path, str) or path not in allowed:
        names = ", ".join(name.rpartition(".")[2] for name in allowed)
        raise IncompatibleError(
            f"{where} names {_short(path)}; a stored artifact may only name the {family} classes {names}"
        )
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)  # a fixed, registered name: our own code


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def require_trusted(obj: object, family: str, where: str) -> str:
    """The class path of `obj` for a manifest; ConfigError (before writing) if a reader would refuse it."""
    path = class_path(obj)
    if path not in TRUSTED_CLASSES[family]:
        raise ConfigError(f"{where}: class {path} is not a registered memos_lab {family} class, so it cannot be stored")
    return path


def trusted_settings(config: Mapping[str, Any], family: str, where: str) -> tuple[type, dict[str, Any]]:
    """The class and keyword settings of a `{"_target_": ..., **settings}` config, for building it directly
    (never through hydra.utils.instantiate): the class must be registered, every key one of its constructor's
    parameters and every value a plain scalar, so no nested `_target_` can reach a constructor."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a _target_, got {_type_name(config)}")
    cls = trusted_class(config.get("_target_"), family, f"{where}._target_")
    parameters = inspect.signature(cls).parameters
    settings: dict[str, Any] = {}
    for key, value in config.items():
        if key == "_target_":
            continue
        if key not in parameters or key.startswith("_"):
            raise ConfigError(f"{where}.{key}: not a setting of {cls.__name__}; valid: {', '.join(parameters)}")
        if not isinstance(value, str | int | float | bool | types.NoneType):
            raise ConfigError(
                f"{where}.{key}: must be a plain value (string, number, boolean or null), got {_type_name(value)}"
            )
        hint = _type_hints(cls.__init__).get(key, Any)
        if _mismatch(value, hint, "") is not None:
            raise ConfigError(
                f"{where}.{key}: expected {_describe(hint)}, got {_type_name(value)} {_short_json(value)}"
            )
        settings[key] = value
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in settings
    ]
    if missing:  # found here, not as a TypeError when the class is built (perhaps much later)
        raise ConfigError(f"{where}: {cls.__name__} needs {', '.join(missing)}, which is not set")
    return cls, settings


def _check_targets(manifest: Any, targets: Mapping[str, str], where: str) -> None:
    """Refuse Hydra keys outside the declared places, and `_target_`s that name unregistered classes."""
    for path, value in _walk(manifest):
        if isinstance(value, dict) and HYDRA_KEYS & set(value):
            keys = sorted(HYDRA_KEYS & set(value))
            if path not in targets or keys != ["_target_"]:
                raise IncompatibleError(
                    f"{where}: {path} holds {', '.join(keys)}; a stored artifact cannot name code there"
                )
            trusted_class(value["_target_"], targets[path], f"{where}: {path}._target_")


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every node of a JSON value, iteratively (depth is checked by `check_plain`)."""
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))


# ---- strict JSON --------------------------------------------------------------------------------------


def parse_json(data: bytes, where: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON from untrusted bytes: UTF-8, bounded size and depth, no duplicate keys, no NaN or
    infinity, no lone surrogates; every failure one DataError line naming `where`."""
    if len(data) > max_bytes:
        raise DataError(f"{where}: {len(data)} bytes of JSON, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg}; line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # a refused constant or duplicate key, an integer of too many digits
        raise DataError(f"{where}: unreadable JSON ({_first_line(error)})") from None
    check_plain(value, where)
    return value


def check_plain(value: Any, where: str) -> None:
    """DataError unless `value` is plain JSON data: bounded depth, finite numbers, UTF-8-encodable strings."""
    stack = [("", value, 0)]
    while stack:
        path, node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels (at {path or 'the top'})")
        if isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise DataError(f"{where}: {path or 'the top'} has a non-string key {key!r}")
                _check_text(key, where, f"{path}.{key}" if path else key)
                stack.append((f"{path}.{key}" if path else key, item, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, where, path)
        elif isinstance(node, float) and not math.isfinite(node):
            raise DataError(f"{where}: {path or 'the value'} is {node}; only finite numbers are stored")
        elif not isinstance(node, int | float | bool | types.NoneType):
            raise DataError(f"{where}: {path or 'the value'} is a {_type_name(node)}, not JSON data")


def _check_text(text: str, where: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: {path or 'the value'} holds a lone surrogate (not valid Unicode text)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the constant {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]  # add's None keeps the test false while recording the key
        raise ValueError(f"duplicate key {duplicate!r}")
    return value


def check_json(value: Any, hint: Any, where: str, prefix: str = "") -> None:
    """DataError naming `where` and the field unless `value` fits the type `hint`: str, int (not bool),
    float, bool, None, Any, Literal, unions, list[T], dict[str, T] and TypedDicts (exactly their keys)."""
    problem = _mismatch(value, hint, "")
    if problem is not None:
        field, expected = problem
        field = (prefix + field).lstrip(".")
        if expected.startswith("unknown"):
            raise DataError(f"{where}: {field}: {expected}")
        got = _type_name(_at(value, problem[0]))
        raise DataError(f"{where}: {field + ': ' if field else ''}expected {expected}, got {got}")


def _mismatch(value: Any, hint: Any, path: str) -> tuple[str, str] | None:
    """(path, what was expected) of the first place `value` does not fit `hint`, or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if hint is None or hint is types.NoneType:
        return None if value is None else (path, "null")
    if origin in (typing.Union, types.UnionType):
        if any(_mismatch(value, arm, path) is None for arm in args):
            return None
        deeper = [m for arm in args if (m := _mismatch(value, arm, path)) is not None and m[0] != path]
        return deeper[0] if deeper else (path, " or ".join(_describe(arm) for arm in args))
    if origin is Literal:
        return (
            None if value in args and type(value) in {type(a) for a in args} else (path, " or ".join(map(repr, args)))
        )
    if origin in (list, tuple, Sequence):  # a JSON array (tuple[T, ...] for fields kept as tuples)
        if not isinstance(value, list):
            return path, _describe(hint)
        return next((m for i, item in enumerate(value) if (m := _mismatch(item, args[0], f"{path}[{i}]"))), None)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return path, _describe(hint)
        return next((m for key, item in value.items() if (m := _mismatch(item, args[1], f"{path}.{key}"))), None)
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):  # a dataclass as its asdict() record
        if not isinstance(value, dict):
            return path, "an object"
        hints = _type_hints(hint)
        required = (
            _required_keys(hint)
            if typing.is_typeddict(hint)
            else {
                f.name
                for f in dataclasses.fields(hint)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
        )
        extra, missing = sorted(set(value) - set(hints)), sorted(required - set(value))
        if extra:
            return f"{path}.{extra[0]}", "unknown field (valid: " + ", ".join(hints) + ")"
        if missing:
            return f"{path}.{missing[0]}", "a value (the field is missing)"
        return next((m for key, item in value.items() if (m := _mismatch(item, hints[key], f"{path}.{key}"))), None)
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else (path, "a number")
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else (path, "an integer")
    if isinstance(hint, type):
        return None if isinstance(value, hint) else (path, _describe(hint))
    raise TypeError(f"check_json cannot check {hint!r}")  # a programming error, not bad data


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    """A record type's field types, evaluated once (get_type_hints evaluates our string annotations),
    with TypedDict's Required/NotRequired markers taken off."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        k: typing.get_args(h)[0] if typing.get_origin(h) in (typing.Required, typing.NotRequired) else h
        for k, h in hints.items()
    }


@functools.cache
def _required_keys(cls: Any) -> frozenset[str]:
    """A TypedDict's required keys, read from its evaluated annotations: with string annotations Python
    3.11 cannot see NotRequired when it builds __required_keys__."""
    hints = typing.get_type_hints(cls, include_extras=True)
    optional = {k for k, h in hints.items() if typing.get_origin(h) is typing.NotRequired}
    return (
        frozenset(hints) - optional
        if cls.__total__
        else frozenset(k for k, h in hints.items() if typing.get_origin(h) is typing.Required)
    )


_MISSING = object()


def _at(value: Any, path: str) -> Any:
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            value = value[int(index)] if index else value[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


_TYPE_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "an object"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if value is _MISSING:
        return "nothing"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_json(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return _short(text[0] if text else type(error).__name__, 200).strip("'\"")


# ---- confined, bounded file access --------------------------------------------------------------------


def _check_name(name: object, where: str) -> None:
    """A listed path: relative, '/'-separated, no empty, '.', '..' or hidden parts, no backslash or NUL."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise DataError(f"{where} {_short(name)}: not a relative path")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\x00" in name or any(not p or p.startswith(".") for p in parts):
        raise DataError(f"{where} {_short(name)}: only relative paths inside the artifact are allowed")
    if name == MANIFEST:
        raise DataError(f"{where} {_short(name)}: the manifest cannot list itself")


def _check_tree(folder: Path, files: Mapping[str, FileEntry], children: Sequence[str]) -> None:
    """Only the listed files, their folders and the children exist; no links or special files anywhere."""
    child_set = set(children)
    folders = {parent.as_posix() for name in files for parent in Path(name).parents[:-1]}
    folders |= {parent.as_posix() for name in children for parent in Path(name).parents[:-1]}
    stack = [(folder, "")]
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    raise DataError(f"{folder / name}: a symbolic link; artifacts never hold links")
                if entry.is_dir(follow_symlinks=False):
                    if name in child_set:
                        continue  # an artifact of its own, checked when it is read
                    if name not in folders:
                        raise DataError(f"{folder / name}: a folder the manifest does not list; remove it")
                    stack.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    if name not in files and name != MANIFEST:
                        raise DataError(f"{folder / name}: a file the manifest does not list; remove it")
                else:
                    raise DataError(f"{folder / name}: not a regular file")
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: missing from the artifact")


@contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, int]]:
    """(descriptor, size) of a regular file, never following a final symlink nor blocking on a FIFO."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as error:
        reason = "a symbolic link" if path.is_symlink() else error.strerror
        raise DataError(f"{path}: cannot be read ({reason})") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        yield handle, info.st_size
    finally:
        os.close(handle)


def _read_exact(handle: int, size: int, path: Path) -> Iterator[bytes]:
    """Blocks of exactly `size` bytes, then a check that nothing follows (never reads further)."""
    left = size
    while left:
        block = os.read(handle, min(_CHUNK, left))
        if not block:
            raise DataError(f"{path}: truncated (ends before its {size} bytes)")
        left -= len(block)
        yield block
    if os.read(handle, 1):
        raise DataError(f"{path}: longer than its {size} bytes")


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (no link followed, no FIFO waited on); else DataError."""
    with _open_regular(path) as (handle, size):
        if size > limit:
            raise DataError(f"{path}: {size} bytes, more than the limit of {limit}")
        return b"".join(_read_exact(handle, size, path))


def _hash_verified(path: Path, entry: FileEntry) -> None:
    with _open_regular(path) as (handle, size):
        if size != entry["bytes"]:
            raise DataError(f"{path}: truncated or altered ({size} bytes, the manifest says {entry['bytes']})")
        digest = hashlib.sha256()
        for block in _read_exact(handle, size, path):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: corrupt (sha256 differs from the manifest)")


def _read_verified(path: Path, entry: FileEntry) -> bytes:
    with _open_regular(path) as (handle, size):
        if size != entry["bytes"]:
            raise DataError(f"{path}: truncated or altered ({size} bytes, the manifest says {entry['bytes']})")
        data = b"".join(_read_exact(handle, size, path))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: corrupt (sha256 differs from the manifest)")
    return data


def read_json_file(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON of a file inside a verified artifact (a regular file, at most `max_bytes`)."""
    return parse_json(read_bounded(Path(path), max_bytes), str(path), max_bytes)


def open_sqlite_readonly(path: Path, table: str) -> sqlite3.Connection:
    """SQLite opened read-only and immutable (no journal or WAL beside it is read or made), where `table`
    must be a real table: a view (which could be a runaway recursive query) is refused."""
    try:
        db = sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as error:
        raise DataError(f"{path}: not a readable SQLite file ({error})") from None
    try:
        kind = db.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    except sqlite3.Error as error:
        db.close()
        raise DataError(f"{path}: not a readable SQLite file ({error})") from None
    if kind != ("table",):
        db.close()
        raise DataError(f"{path}: {table!r} is {'missing' if kind is None else 'a ' + str(kind[0])}, not a table")
    return db


# ---- writing ------------------------------------------------------------------------------------------


def write_artifact(
    folder: Path,
    kind: str,
    meta: Mapping[str, Any],
    *,
    files: Mapping[str, bytes] | None = None,
    build: Callable[[Path], None] | None = None,
    fingerprint: Mapping[str, str] | None = None,
    children: Sequence[str] = (),
) -> None:
    """Write an artifact crash-safely: the payload (`files`, then whatever `build(staging)` writes, e.g.
    child artifacts or an SQLite file) goes into a fresh folder beside `folder`, every file is listed with
    its size and sha256, and the folder is swapped in whole. An existing `folder` must be empty or an
    artifact; anything else is never replaced."""
    folder = Path(folder)
    meta = dict(meta)
    check_plain(meta, f"{folder}: {kind} meta")  # refuse now what a reader would refuse later
    _check_replaceable(folder)

    def fill(staging: Path) -> None:
        for name, data in (files or {}).items():
            _check_name(name, f"{folder}: payload file")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        if build is not None:
            build(staging)
        write_manifest(staging, kind, meta, fingerprint=fingerprint, children=children)

    atomic_write_dir(folder, fill)


def write_manifest(
    staging: Path,
    kind: str,
    meta: Mapping[str, Any],
    *,
    fingerprint: Mapping[str, str] | None = None,
    children: Sequence[str] = (),
) -> None:
    """List every file under `staging` (outside the children) and write the manifest; empty folders are
    dropped, since a reader accepts only listed paths."""
    from memos_lab.memory.item import now_iso  # a light module; imported here to keep this one leaf-level

    for name in children:
        _check_name(name, f"{staging}: child")
        if not (staging / name / MANIFEST).is_file():
            raise ConfigError(f"{staging / name}: a child artifact must be written before its parent's manifest")
    _drop_empty_folders(staging, set(children))
    files: dict[str, FileEntry] = {}
    for path in sorted(staging.rglob("*")):
        name = path.relative_to(staging).as_posix()
        if any(name == child or name.startswith(child + "/") for child in children) or path.is_dir():
            continue
        if path.is_symlink() or not path.is_file():
            raise ConfigError(f"{path}: artifacts hold only regular files")
        _check_name(name, f"{staging}: written file")
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "created_at": now_iso(),
        "fingerprint": dict(fingerprint) if fingerprint is not None else None,
        "meta": dict(meta),
        "files": files,
        "children": list(children),
    }
    (staging / MANIFEST).write_text(
        json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _drop_empty_folders(staging: Path, keep: set[str]) -> None:
    for path in sorted((p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if path.relative_to(staging).as_posix() not in keep and not any(path.iterdir()):
            path.rmdir()


def _check_replaceable(folder: Path) -> None:
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (not any(folder.iterdir()) or _is_artifact(folder)):
        return
    raise ConfigError(f"{folder} exists and is not an empty folder or a memos_lab artifact; it is not replaced")


def _is_artifact(folder: Path) -> bool:
    """Whether `folder` holds a manifest of ours (any version), so replacing it loses nothing foreign."""
    try:
        raw = read_json_file(folder / MANIFEST)
    except DataError:
        return False
    if not isinstance(raw, dict):
        return False
    legacy = raw.get("format") == "memos_lab.cube" or "format_version" in raw or raw.get("kind") == "lora"
    return raw.get("format") == FORMAT or legacy


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _staging_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file crash-safely: write beside the target, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _staging_name(path)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # follows the umask
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _raise_storage_error(error, path)
        raise


def atomic_write_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Write a whole folder crash-safely: `build` fills a fresh staging folder beside `target`, every file
    is fsynced, then the folder is swapped in by rename, so `target` is always either the old or the new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(target)
    staging.mkdir()  # follows the umask, so the result looks like a plain mkdir
    try:
        build(staging)
        _fsync_tree(staging)
        if target.exists():
            _swap(staging, target)  # `staging` now holds the old folder
            shutil.rmtree(staging)
        else:
            os.rename(staging, target)
        _fsync_path(target.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        _raise_storage_error(error, target)
        raise


# errno values of a disk that is full, or of a file over its size limit (`ulimit -f`) or quota
_NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _raise_storage_error(error: BaseException, target: Path) -> None:
    """StorageError, one line, when the disk refused the write of `target` (full, over a limit, an I/O
    error, also as SQLite reports them); every other error is left to the caller to re-raise."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE | {errno.EIO}:
        reason = "no space left" if error.errno in _NO_SPACE else "an I/O error"
        detail = error.strerror
    elif isinstance(error, sqlite3.OperationalError) and getattr(error, "sqlite_errorname", "").startswith(
        ("SQLITE_FULL", "SQLITE_IOERR")
    ):
        reason = "no space left" if error.sqlite_errorname == "SQLITE_FULL" else "no space left or an I/O error"
        detail = f"SQLite: {error}"
    else:
        return
    raise StorageError(f"{reason} while writing {target} ({detail}); what was there is unchanged") from None


def _swap(new: Path, target: Path) -> None:
    """Exchange two folders atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames, where a
    crash in between leaves the old folder intact beside the target under a `.old` name."""
    if _rename_exchange(new, target):
        return
    backup = new.with_name(new.name + ".old")
    os.rename(target, backup)
    os.rename(new, target)
    os.rename(backup, new)


def _rename_exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        _fsync_path(path)
    _fsync_path(folder)


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


# ---- writers' lock and leftovers ----------------------------------------------------------------------


def writer_lock(target: Path, timeout: float = -1) -> FileLock:
    """The lock every writer of `target` (an artifact folder, a registry file) holds: the file
    `<target>.lock` beside it. `timeout` in seconds (-1 waits for ever, 0 tries once); use as a context."""
    target = Path(target)
    return FileLock(f"{target}.lock", timeout=timeout)


def staging_leftovers(target: Path) -> list[Path]:
    """Staging files and folders of `target` left by interrupted writes: only our own names
    (`.<name>.<8 random>.tmp`, the `.old` of a two-rename swap, and the `.<name>.tmp-<8 hex>` of older code)."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.([a-z0-9_]{{8}}\.tmp(\.old)?|tmp-[0-9a-f]{{8}})$")
    try:
        return sorted(target.parent / name for name in os.listdir(target.parent) if pattern.match(name))
    except OSError:
        return []


def remove_stale_staging(target: Path, *, held: bool = False) -> list[Path]:
    """Remove `target`'s staging leftovers, only when no writer holds `writer_lock(target)` (or the caller
    holds it: `held=True`). Returns what was removed; a busy lock or a read-only place removes nothing."""
    leftovers = staging_leftovers(target)
    if not leftovers:
        return []
    if held:
        return _remove(leftovers)
    try:
        with writer_lock(target, timeout=0):
            return _remove(staging_leftovers(target))
    except (Timeout, OSError):
        return []


def _remove(paths: list[Path]) -> list[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return paths
