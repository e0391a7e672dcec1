"""MOS, the Memory Operating System: users, cubes, access checks, and routing of every memory call.

Agents are users too: a team cube shared read-write by several agents sits beside each agent's private
cube, under the same rules. With a `root` folder, users, shares and cubes survive restarts:
`root/registry.json` (users, cube owners, shares; rewritten atomically on every change) and
`root/cubes/<cube id>/` (each cube's dump, written by `save`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memos_lab.artifact import atomic_write_text, read_json_file
from memos_lab.cube import MemCube
from memos_lab.errors import AccessDeniedError, ConfigError, DataError, MemosError, NotFoundError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.base import SearchFilter, TextualMemory

READ = "read"
WRITE = "write"  # implies read
MODES = (READ, WRITE)
REGISTRY_FILE = "registry.json"
CUBES_DIR = "cubes"
_CUBE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # also a folder name: no separators, no leading dot


@dataclass(frozen=True)
class CubeHit:
    cube_id: str
    item: MemoryItem
    score: float


class MemoryListener(Protocol):
    """Told about every change the MOS routes (a scheduler keeps its faster tiers in step with the store)."""

    def on_add(self, cube_id: str, items: Sequence[MemoryItem]) -> None: ...

    def on_update(self, cube_id: str, old_id: str, new_item: MemoryItem) -> None: ...

    def on_delete(self, cube_id: str, item_id: str) -> None: ...


class MOS:
    """Every operation names its caller and is checked against the cube's owner and shares."""

    def __init__(
        self, textual_memory_factory: Callable[[], TextualMemory], root: Path | None = None, model: Any | None = None
    ) -> None:
        self._new_textual_memory = textual_memory_factory
        self._users: set[str] = set()
        self._cubes: dict[str, MemCube] = {}
        self._shares: dict[str, dict[str, str]] = {}  # cube id -> user -> mode
        self._listeners: list[MemoryListener] = []
        self.root = None if root is None else Path(root)
        if self.root is not None and (self.root / REGISTRY_FILE).exists():
            self._open(model)

    def attach(self, listener: MemoryListener) -> None:
        self._listeners.append(listener)

    def detach(self, listener: MemoryListener) -> None:
        self._listeners.remove(listener)

    # ---- users and cubes ------------------------------------------------------------------------

    def register_user(self, user: str) -> None:
        if not isinstance(user, str) or not user:
            raise MemosError("a user id must be a non-empty string")
        self._users.add(user)
        self._save_registry()

    def create_cube(self, owner: str, cube_id: str | None = None) -> MemCube:
        self._require_user(owner)
        cube = MemCube.create(owner, self._new_textual_memory(), cube_id)
        self.register_cube(cube)
        return cube

    def create_team_cube(self, owner: str, members: Iterable[str], cube_id: str | None = None) -> MemCube:
        """A cube every member (agent or person) may read and write; only `owner` may share it further."""
        members = list(members)
        for member in members:
            self._require_user(member)
        cube = self.create_cube(owner, cube_id)
        for member in members:
            if member != owner:
                self.share_cube(owner, cube.cube_id, member, WRITE)
        return cube

    def register_cube(self, cube: MemCube) -> None:
        self._require_user(cube.owner)
        if not isinstance(cube.cube_id, str) or not _CUBE_ID.fullmatch(cube.cube_id):
            raise ConfigError(f"cube id {cube.cube_id!r}: use letters, digits, '_', '-' and '.' (not first)")
        if cube.cube_id in self._cubes:
            raise MemosError(f"a cube with id {cube.cube_id!r} is already registered")
        self._cubes[cube.cube_id] = cube
        self._shares[cube.cube_id] = {}
        self._save_registry()

    def share_cube(self, caller: str, cube_id: str, user: str, mode: str = READ) -> None:
        if mode not in MODES:
            raise MemosError(f"share mode {mode!r} is not one of {list(MODES)}")
        self._require_owner(caller, cube_id, "share")
        self._require_user(user)
        self._shares[cube_id][user] = mode
        self._save_registry()

    def unshare_cube(self, caller: str, cube_id: str, user: str) -> None:
        self._require_owner(caller, cube_id, "unshare")
        self._shares[cube_id].pop(user, None)
        self._save_registry()

    def readable_cubes(self, user: str) -> list[str]:
        self._require_user(user)
        return [cube_id for cube_id in self._cubes if self._may(user, cube_id, READ)]

    def cube(self, caller: str, cube_id: str) -> MemCube:
        """The cube object itself (slots, dump) for its owner; others go through the checked operations,
        since the object would let them bypass every check."""
        self._require_owner(caller, cube_id, "open")
        return self._cubes[cube_id]

    # ---- routed memory operations ---------------------------------------------------------------

    def add(self, caller: str, cube_id: str, items: Iterable[MemoryItem | str]) -> list[str]:
        self._check(caller, cube_id, WRITE)
        text = self._cubes[cube_id].text
        ids = text.add(items)
        if self._listeners:
            added = [text.get(item_id) for item_id in ids]
            for listener in self._listeners:
                listener.on_add(cube_id, added)
        return ids

    def search(
        self,
        caller: str,
        query: str,
        top_k: int = 10,
        cube_ids: Sequence[str] | None = None,
        filters: Mapping[str, object] | SearchFilter | None = None,
    ) -> list[CubeHit]:
        """Search the named cubes (all readable ones if none are named); naming an unreadable cube is refused."""
        if cube_ids is None:
            cube_ids = self.readable_cubes(caller)
        if isinstance(cube_ids, str):
            raise ConfigError("cube_ids must be a list of cube ids, not one string")
        for cube_id in cube_ids:
            self._check(caller, cube_id, READ)
        hits = [
            CubeHit(cube_id, hit.item, hit.score)
            for cube_id in dict.fromkeys(cube_ids)
            for hit in self._cubes[cube_id].text.search(query, top_k, filters)
        ]
        return sorted(hits, key=lambda hit: -hit.score)[:top_k]

    def get(self, caller: str, cube_id: str, item_id: str) -> MemoryItem:
        self._check(caller, cube_id, READ)
        return self._cubes[cube_id].text.get(item_id)

    def get_all(
        self, caller: str, cube_id: str, filters: Mapping[str, object] | SearchFilter | None = None
    ) -> list[MemoryItem]:
        self._check(caller, cube_id, READ)
        return self._cubes[cube_id].text.get_all(filters)

    def update(self, caller: str, cube_id: str, item_id: str, text: str, **metadata: object) -> MemoryItem:
        self._check(caller, cube_id, WRITE)
        new = self._cubes[cube_id].text.update(item_id, text, **metadata)
        for listener in self._listeners:
            listener.on_update(cube_id, item_id, new)
        return new

    def merge(self, caller: str, cube_id: str, item_ids: Sequence[str], text: str | None = None) -> MemoryItem:
        self._check(caller, cube_id, WRITE)
        merged = self._cubes[cube_id].text.merge(item_ids, text)
        for listener in self._listeners:
            for old_id in item_ids:  # each merged item now has the merged one as its successor
                listener.on_update(cube_id, old_id, merged)
        return merged

    def delete(self, caller: str, cube_id: str, item_id: str, hard: bool = False) -> None:
        self._check(caller, cube_id, WRITE)
        self._cubes[cube_id].text.delete(item_id, hard=hard)
        for listener in self._listeners:
            listener.on_delete(cube_id, item_id)

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, caller: str, cube_id: str) -> Path:
        """Dump a cube under `root/cubes/` (crash-safe); any writer may save what it may change."""
        self._check(caller, cube_id, WRITE)
        if self.root is None:
            raise ConfigError("this MOS has no root folder to save cubes into (MOS(..., root=DIR))")
        folder = self.root / CUBES_DIR / cube_id
        self._cubes[cube_id].dump(folder)
        return folder

    def _save_registry(self) -> None:
        if self.root is None:
            return
        registry = {
            "users": sorted(self._users),
            "cubes": {cube_id: {"owner": cube.owner, "shares": self._shares[cube_id]} for cube_id, cube in self._cubes.items()},
        }
        atomic_write_text(self.root / REGISTRY_FILE, json.dumps(registry, indent=2, sort_keys=True) + "\n")

    def _open(self, model: Any | None) -> None:
        path = self.root / REGISTRY_FILE
        try:
            registry = read_json_file(path)  # bounded, strict, never through a link
            users = {str(user) for user in registry["users"]}
            cubes = {str(k): (str(v["owner"]), {str(u): str(m) for u, m in v["shares"].items()}) for k, v in registry["cubes"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{path}: unreadable MOS registry ({error})") from None
        embedder = self._new_textual_memory().embedder
        self._users = users
        for cube_id, (owner, shares) in cubes.items():
            folder = self.root / CUBES_DIR / cube_id
            if (folder / "manifest.json").exists():
                cube = MemCube.load(folder, embedder, model=model)
                if (cube.cube_id, cube.owner) != (cube_id, owner):
                    raise DataError(f"{folder}: holds cube {cube.cube_id!r} of {cube.owner!r}, the registry says {cube_id!r} of {owner!r}")
            else:  # registered but never saved: it was empty
                cube = MemCube.create(owner, self._new_textual_memory(), cube_id)
            unknown = sorted(set(shares.values()) - set(MODES))
            if unknown or owner not in users or not set(shares) <= users:
                raise DataError(f"{path}: cube {cube_id!r} names unknown users or share modes {unknown}")
            self._cubes[cube_id] = cube
            self._shares[cube_id] = shares

    # ---- access control -------------------------------------------------------------------------

    def _require_user(self, user: str) -> None:
        if user not in self._users:
            raise NotFoundError(f"unknown user {user!r}; register it first")

    def _cube(self, cube_id: str) -> MemCube:
        try:
            return self._cubes[cube_id]
        except (KeyError, TypeError):
            raise NotFoundError(f"no cube with id {cube_id!r}") from None

    def _require_owner(self, caller: str, cube_id: str, action: str) -> None:
        self._require_user(caller)
        if caller != self._cube(cube_id).owner:
            raise AccessDeniedError(f"user {caller!r} does not own cube {cube_id!r} and cannot {action} it")

    def _may(self, user: str, cube_id: str, mode: str) -> bool:
        if self._cubes[cube_id].owner == user:
            return True
        granted = self._shares[cube_id].get(user)
        return granted == WRITE or (granted == READ and mode == READ)

    def _check(self, caller: str, cube_id: str, mode: str) -> None:
        self._require_user(caller)
        self._cube(cube_id)
        if not self._may(caller, cube_id, mode):
            raise AccessDeniedError(f"user {caller!r} may not {mode} cube {cube_id!r}")
