"""MOS, the Memory Operating System: users, cubes, access checks, and routing of every memory call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from memos_lab.cube import MemCube
from memos_lab.errors import AccessDeniedError, MemosError, NotFoundError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.base import SearchFilter, SearchHit, TextualMemory

READ = "read"
WRITE = "write"  # implies read
MODES = (READ, WRITE)


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

    def __init__(self, textual_memory_factory: Callable[[], TextualMemory]) -> None:
        self._new_textual_memory = textual_memory_factory
        self._users: set[str] = set()
        self._cubes: dict[str, MemCube] = {}
        self._shares: dict[str, dict[str, str]] = {}  # cube id -> user -> mode
        self._listeners: list[MemoryListener] = []

    def attach(self, listener: MemoryListener) -> None:
        self._listeners.append(listener)

    def detach(self, listener: MemoryListener) -> None:
        self._listeners.remove(listener)

    # ---- users and cubes ------------------------------------------------------------------------

    def register_user(self, user: str) -> None:
        if not isinstance(user, str) or not user:
            raise MemosError("a user id must be a non-empty string")
        self._users.add(user)

    def create_cube(self, owner: str, cube_id: str | None = None) -> MemCube:
        self._require_user(owner)
        cube = MemCube.create(owner, self._new_textual_memory(), cube_id)
        self.register_cube(cube)
        return cube

    def register_cube(self, cube: MemCube) -> None:
        self._require_user(cube.owner)
        if cube.cube_id in self._cubes:
            raise MemosError(f"a cube with id {cube.cube_id!r} is already registered")
        self._cubes[cube.cube_id] = cube
        self._shares[cube.cube_id] = {}

    def share_cube(self, caller: str, cube_id: str, user: str, mode: str = READ) -> None:
        if mode not in MODES:
            raise MemosError(f"share mode {mode!r} is not one of {list(MODES)}")
        cube = self._cube(cube_id)
        if caller != cube.owner:
            raise AccessDeniedError(f"user {caller!r} does not own cube {cube_id!r} and cannot share it")
        self._require_user(user)
        self._shares[cube_id][user] = mode

    def readable_cubes(self, user: str) -> list[str]:
        return [cube_id for cube_id in self._cubes if self._may(user, cube_id, READ)]

    def cube(self, caller: str, cube_id: str) -> MemCube:
        self._check(caller, cube_id, READ)
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
            self._require_user(caller)
            cube_ids = self.readable_cubes(caller)
        for cube_id in cube_ids:
            self._check(caller, cube_id, READ)
        hits = [
            CubeHit(cube_id, hit.item, hit.score)
            for cube_id in cube_ids
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

    def delete(self, caller: str, cube_id: str, item_id: str, hard: bool = False) -> None:
        self._check(caller, cube_id, WRITE)
        self._cubes[cube_id].text.delete(item_id, hard=hard)
        for listener in self._listeners:
            listener.on_delete(cube_id, item_id)

    # ---- access control -------------------------------------------------------------------------

    def _require_user(self, user: str) -> None:
        if user not in self._users:
            raise NotFoundError(f"unknown user {user!r}; register it first")

    def _cube(self, cube_id: str) -> MemCube:
        try:
            return self._cubes[cube_id]
        except KeyError:
            raise NotFoundError(f"no cube with id {cube_id!r}") from None

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
