"""MOS, the Memory Operating System: users, cubes, access checks, and routing of every memory call.

Agents are users too: a team cube shared read-write by several agents sits beside each agent's private
cube, under the same rules. With a `root` folder, users, shares and cubes survive restarts:
`root/registry.json` (users, cube owners, shares; rewritten atomically on every change) and
`root/cubes/<cube id>/` (each cube's dump, written by `save`).

Several processes may open one root. Every registry change is made under the root's writer lock on the
registry as it is on disk (never on a stale copy), and each process follows the others' registry changes
and saved cubes before every checked operation. `save` refuses to overwrite a cube that another process
saved since this one read it, rather than lose that process's items.

A durable MOS (`durable=True`, for a server) also commits every item change to the cube's journal
(`memos_lab.journal`, SQLite) before the call returns, so an acknowledged write survives a kill; a cube is
its last dump plus its journal, and `save` folds the journal into a new dump. Processes follow each other's
journal rows before every checked operation, and the journal's write lock orders their writes to one cube.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypedDict

import numpy as np

from memos_lab.artifact import atomic_write_text, check_json, read_json_file, remove_stale_staging
from memos_lab.cube import MANIFEST_FILE, SLOTS, MemCube
from memos_lab.errors import AccessDeniedError, BusyError, ConfigError, DataError, MemosError, NotFoundError
from memos_lab.journal import CubeJournal, journal_path
from memos_lab.locking import hold_writer_lock
from memos_lab.memory.item import STATUSES, MemoryItem
from memos_lab.memory.textual.base import MAX_ID_CHARS, SearchFilter, TextualMemory
from memos_lab.settings import Settings, uses_settings

READ = "read"
WRITE = "write"  # implies read
MODES = (READ, WRITE)
REGISTRY_FILE = "registry.json"
CUBES_DIR = "cubes"
_CUBE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # also a folder name: no separators, no leading dot
Stamp = tuple[int, int, int] | None  # (inode, mtime ns, size) of a file, None if absent: changes on every rewrite


@dataclass(frozen=True)
class CubeHit:
    cube_id: str
    item: MemoryItem
    score: float


@dataclass(frozen=True)
class CubeInfo:
    """What a reader may know of a cube besides its items (the same in-process and over HTTP)."""

    cube_id: str
    owner: str
    items: int  # stored items of every status
    index_bytes: int
    returns_stored_items: bool  # False: search returns memories of the backend's own (mem0's extraction)
    slots: tuple[str, ...]  # the filled memory slots: activation, parametric


@dataclass
class _Write:
    """What one write changed in a cube's text memory, for the journal: new or changed ids, purged ids."""

    text: TextualMemory
    changed: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)


class MemoryListener(Protocol):
    """Told about every change the MOS routes (a scheduler keeps its faster tiers in step with the store)."""

    def on_add(self, cube_id: str, items: Sequence[MemoryItem]) -> None: ...

    def on_update(self, cube_id: str, old_id: str, new_item: MemoryItem) -> None: ...

    def on_delete(self, cube_id: str, item_id: str) -> None: ...


@dataclass(frozen=True)
class LocalSettings(Settings):
    """`mos=local`: the experiments' MOS in their own process, without a root, so its users and cubes live
    for the run (conf/mos/local.yaml). No settings yet; `mos=remote` has RemoteSettings."""

    section: ClassVar[str] = "mos"


class MOS:
    """Every operation names its caller and is checked against the cube's owner and shares.

    Arguments come in one order: the caller, then the cube (`cube_id`), then what the call acts on (`items`,
    `item_id`, ...). `search` spans cubes, so its scope is the keyword `cube_ids=` (all readable cubes if
    none are named), as are its `top_k` and `filters`.
    """

    def __init__(
        self,
        textual_memory_factory: Callable[[], TextualMemory],
        root: Path | None = None,
        model: Any | None = None,
        lock_timeout_s: float = 60.0,
        durable: bool = False,
    ) -> None:
        if durable and root is None:
            raise ConfigError("a durable MOS needs a root folder (MOS(..., root=DIR, durable=True))")
        self.durable = durable
        self._journals: dict[str, CubeJournal] = {}
        self._seen: dict[str, int] = {}  # the journal head each cube's memory holds (durable only)
        self._new_textual_memory = textual_memory_factory
        self._users: set[str] = set()
        self._cubes: dict[str, MemCube] = {}
        self._shares: dict[str, dict[str, str]] = {}  # cube id -> user -> mode
        self._listeners: list[MemoryListener] = []
        self._model = model
        self.lock_timeout_s = lock_timeout_s
        self._registry_stamp: Stamp = None  # of the registry file this process last read or wrote
        self._cube_stamps: dict[str, Stamp] = {}  # of each cube's manifest when this process read or saved it
        self._unsaved: set[str] = set()  # cubes changed here since they were read or saved
        self.root = None if root is None else Path(root)
        if self.root is not None:
            with hold_writer_lock(self.root, lock_timeout_s):
                remove_stale_staging(self.root / REGISTRY_FILE, held=True)  # an interrupted registry write's
                self._sync()

    @classmethod
    @uses_settings(LocalSettings)
    def from_settings(cls, textual_memory_factory: Callable[[], TextualMemory], **values: Any) -> MOS:
        """The experiments' MOS (`mos=local`), built as `mos=remote` builds memos_lab.client.RemoteMOS."""
        LocalSettings.from_mapping(values)  # an unknown key fails in one line
        return cls(textual_memory_factory)

    def attach(self, listener: MemoryListener) -> None:
        self._listeners.append(listener)

    def detach(self, listener: MemoryListener) -> None:
        self._listeners.remove(listener)

    # ---- users and cubes ------------------------------------------------------------------------

    def register_user(self, user: str) -> None:
        _check_user_id(user, "user id")
        self._change_registry(lambda: self._users.add(user))

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
        _check_cube_id(cube.cube_id, "cube id")

        def register() -> None:
            self._require_user(cube.owner)
            if cube.cube_id in self._cubes:
                raise MemosError(f"a cube with id {cube.cube_id!r} is already registered")
            self._cubes[cube.cube_id] = cube
            self._shares[cube.cube_id] = {}
            self._cube_stamps[cube.cube_id] = None  # never saved
            if self.durable:  # any rows of this id are a former cube's leftovers; its items are the first ones
                journal = self._journal(cube.cube_id)
                with journal.writing():
                    journal.reset()
                    self._seen[cube.cube_id] = journal.record(list(cube.text.get_all({"statuses": STATUSES})))
            elif self.root is not None and len(cube.text):
                self._unsaved.add(cube.cube_id)

        self._change_registry(register)

    def share_cube(self, caller: str, cube_id: str, user: str, mode: str = READ) -> None:
        if mode not in MODES:
            raise MemosError(f"share mode {mode!r} is not one of {list(MODES)}")

        def share() -> None:
            self._require_owner(caller, cube_id, "share")
            self._require_user(user)
            self._shares[cube_id][user] = mode

        self._change_registry(share)

    def unshare_cube(self, caller: str, cube_id: str, user: str) -> None:
        def unshare() -> None:
            self._require_owner(caller, cube_id, "unshare")
            self._shares[cube_id].pop(user, None)

        self._change_registry(unshare)

    def readable_cubes(self, user: str) -> list[str]:
        self._sync()
        self._require_user(user)
        return [cube_id for cube_id in self._cubes if self._may(user, cube_id, READ)]

    def cube(self, caller: str, cube_id: str) -> MemCube:
        """The cube object itself (slots, dump) for its owner; others go through the checked operations,
        since the object would let them bypass every check."""
        self._sync()
        self._require_owner(caller, cube_id, "open")
        self._follow(cube_id)
        self._unsaved.add(cube_id)  # whoever holds the object may change it
        return self._cubes[cube_id]

    def new_text_memory(self) -> TextualMemory:
        """An empty text memory of the kind this MOS gives new cubes (its backend and embedder)."""
        return self._new_textual_memory()

    def describe(self, caller: str, cube_id: str) -> CubeInfo:
        self._check(caller, cube_id, READ)
        cube = self._cubes[cube_id]
        return CubeInfo(
            cube_id,
            cube.owner,
            len(cube.text),
            cube.text.index_nbytes(),
            cube.text.returns_stored_items,
            tuple(slot for slot in SLOTS if getattr(cube, slot) is not None),
        )

    def slot(self, caller: str, cube_id: str, slot: str) -> Any | None:
        """A cube's activation or parametric memory (None if empty), for a writer to build a new one from."""
        self._check(caller, cube_id, WRITE)
        return getattr(self._cubes[cube_id], _slot_name(slot))

    def fill_slot(self, caller: str, cube_id: str, slot: str, memory: Any) -> None:
        """Put `memory` into a cube's activation or parametric slot and, with a root, save the cube, so the
        slot is on disk when this returns. A replaced parametric memory's adapters leave the shared model."""
        self._check(caller, cube_id, WRITE)
        cube = self._cubes[cube_id]
        old = getattr(cube, _slot_name(slot))
        setattr(cube, slot, memory)
        if self.root is not None:
            try:
                self.save(caller, cube_id)
            except BaseException:
                setattr(cube, slot, old)  # the cube holds what its dump holds
                raise
        if old is not None and old is not memory and hasattr(old, "close"):
            old.close()

    # ---- routed memory operations ---------------------------------------------------------------

    def add(self, caller: str, cube_id: str, items: Iterable[MemoryItem | str]) -> list[str]:
        with self._writing(caller, cube_id) as write:
            text = write.text
            ids = text.add(items)
            write.changed += ids
        if self._listeners:
            added = [text.get(item_id) for item_id in ids]
            for listener in self._listeners:
                listener.on_add(cube_id, added)
        return ids

    def search(
        self,
        caller: str,
        query: str,
        *,
        top_k: int = 10,
        cube_ids: Sequence[str] | None = None,
        filters: Mapping[str, object] | SearchFilter | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[CubeHit]:
        """Search the named cubes (all readable ones if none are named); naming an unreadable cube is refused.
        `query_vector`: the query's embedding by the root's embedder, when the caller has it already (a server
        encodes concurrent queries together); the hits are those the search would find encoding it itself."""
        if cube_ids is None:
            cube_ids = self.readable_cubes(caller)
        if isinstance(cube_ids, str):
            raise ConfigError("cube_ids must be a list of cube ids, not one string")
        for cube_id in cube_ids:
            self._check(caller, cube_id, READ)
        hits = [
            CubeHit(cube_id, hit.item, hit.score)
            for cube_id in dict.fromkeys(cube_ids)
            for hit in self._cubes[cube_id].text.search(query, top_k, filters, query_vector)
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
        with self._writing(caller, cube_id) as write:
            new = write.text.update(item_id, text, **metadata)
            write.changed += [new.id, item_id]
        self._invalidate(cube_id, [item_id])
        for listener in self._listeners:
            listener.on_update(cube_id, item_id, new)
        return new

    def merge(self, caller: str, cube_id: str, item_ids: Sequence[str], text: str | None = None) -> MemoryItem:
        with self._writing(caller, cube_id) as write:
            merged = write.text.merge(item_ids, text)
            write.changed += [merged.id, *item_ids]
        self._invalidate(cube_id, item_ids)
        for listener in self._listeners:
            for old_id in item_ids:  # each merged item now has the merged one as its successor
                listener.on_update(cube_id, old_id, merged)
        return merged

    def delete(self, caller: str, cube_id: str, item_id: str, hard: bool = False) -> None:
        with self._writing(caller, cube_id) as write:
            write.text.delete(item_id, hard=hard)
            (write.purged if hard else write.changed).append(item_id)
        self._invalidate(cube_id, [item_id])
        for listener in self._listeners:
            listener.on_delete(cube_id, item_id)

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, caller: str, cube_id: str) -> Path:
        """Dump a cube under `root/cubes/` (crash-safe); any writer may save what it may change.

        Refused (BusyError) when another process saved the cube since this one read it: overwriting it
        would lose that process's changes. Open the root again to build on them.
        """
        self._check(caller, cube_id, WRITE)
        if self.root is None:
            raise ConfigError("this MOS has no root folder to save cubes into (MOS(..., root=DIR))")
        folder = self.root / CUBES_DIR / cube_id
        if self.durable:  # the journal's lock holds every writer off; memory is the journal's head
            journal = self._journal(cube_id)
            with journal.writing():
                self._check(caller, cube_id, WRITE)
                with hold_writer_lock(folder, self.lock_timeout_s):
                    self._cubes[cube_id].dump(folder)
                    journal.checkpoint(self._seen[cube_id])
            return folder
        with hold_writer_lock(self.root, self.lock_timeout_s), hold_writer_lock(folder, self.lock_timeout_s):
            if _stamp(folder / MANIFEST_FILE) != self._cube_stamps.get(cube_id):
                raise BusyError(
                    f"{folder}: another process saved cube {cube_id!r} after this one read it; "
                    "open the MOS root again and redo the change"
                )
            self._cubes[cube_id].dump(folder)
            self._cube_stamps[cube_id] = _stamp(folder / MANIFEST_FILE)
            self._unsaved.discard(cube_id)
        return folder

    # ---- following other processes --------------------------------------------------------------

    def _invalidate(self, cube_id: str, item_ids: Sequence[str]) -> None:
        """The cube's own activation memory drops the caches of items that changed (never a stale KV)."""
        activation = self._cubes[cube_id].activation
        if activation is not None:
            for item_id in item_ids:
                activation.invalidate(item_id)

    @contextmanager
    def _writing(self, caller: str, cube_id: str) -> Iterator[_Write]:
        """Check the caller may write, let the body change the cube's text memory, and (durable) commit
        what it changed to the journal before returning, under the journal's lock."""
        self._check(caller, cube_id, WRITE)  # before the journal is touched: the id is a registered cube's
        if not self.durable:
            yield _Write(self._cubes[cube_id].text)
            if self.root is not None:
                self._unsaved.add(cube_id)
            return
        journal = self._journal(cube_id)
        write = None
        try:
            with journal.writing():
                self._check(caller, cube_id, WRITE)  # again, at the journal's head: another process may have written
                write = _Write(self._cubes[cube_id].text)
                yield write
                items = [write.text.get(item_id) for item_id in dict.fromkeys(write.changed)]
                self._seen[cube_id] = journal.record(items, write.purged)
        except BaseException:
            if write is not None and (write.changed or write.purged):
                self._seen.pop(cube_id, None)  # memory holds what the journal may not: read the cube again
            raise

    def _journal(self, cube_id: str) -> CubeJournal:
        assert self.root is not None  # a durable MOS has a root
        if cube_id not in self._journals:
            self._journals[cube_id] = CubeJournal(
                journal_path(self.root, cube_id), self._new_textual_memory().embedder.dim, self.lock_timeout_s
            )
        return self._journals[cube_id]

    def _change_registry(self, change: Callable[[], None]) -> None:
        """Apply `change` to the registry as it is on disk now, under the root's lock, and write it back."""
        if self.root is None:
            change()
            return
        with hold_writer_lock(self.root, self.lock_timeout_s):
            self._sync()
            change()
            registry = {
                "users": sorted(self._users),
                "cubes": {
                    cube_id: {"owner": cube.owner, "shares": self._shares[cube_id]}
                    for cube_id, cube in self._cubes.items()
                },
            }
            atomic_write_text(self.root / REGISTRY_FILE, json.dumps(registry, indent=2, sort_keys=True) + "\n")
            self._registry_stamp = _stamp(self.root / REGISTRY_FILE)

    def _sync(self) -> None:
        """Adopt the registry on disk if another process rewrote it since this one last read or wrote it."""
        if self.root is None:
            return
        path = self.root / REGISTRY_FILE
        stamp = _stamp(path)
        if stamp == self._registry_stamp:
            return
        users, cubes = _read_registry(path)
        for cube_id in [cube_id for cube_id in self._cubes if cube_id not in cubes]:
            del self._cubes[cube_id]
        for cube_id, (owner, _) in cubes.items():
            if cube_id not in self._cubes:
                self._cubes[cube_id] = self._read_cube(cube_id, owner)
        self._users = users
        self._shares = {cube_id: shares for cube_id, (_, shares) in cubes.items()}
        self._registry_stamp = stamp

    def _follow(self, cube_id: str) -> None:
        """Reload a cube another process saved since this one read it, unless this one changed it since."""
        if self.durable:
            seen = self._seen.get(cube_id)
            if seen is not None:
                changes = self._journal(cube_id).changes(seen)
                if changes.base <= seen <= changes.head:
                    self._cubes[cube_id].text.apply_stored(changes.items)
                    self._seen[cube_id] = changes.head
                    return
            self._cubes[cube_id] = self._read_cube(cube_id, self._cubes[cube_id].owner)
            return
        if self.root is None or cube_id in self._unsaved:
            return
        if _stamp(self.root / CUBES_DIR / cube_id / MANIFEST_FILE) != self._cube_stamps.get(cube_id):
            self._cubes[cube_id] = self._read_cube(cube_id, self._cubes[cube_id].owner)

    def _read_cube(self, cube_id: str, owner: str) -> MemCube:
        assert self.root is not None  # only called from _sync and _follow, which return early without a root
        folder = self.root / CUBES_DIR / cube_id
        with hold_writer_lock(folder, self.lock_timeout_s):  # never half of one dump and half of the next
            stamp = _stamp(folder / MANIFEST_FILE)
            if stamp is None:  # registered but never saved: it was empty
                cube = MemCube.create(owner, self._new_textual_memory(), cube_id)
            else:
                cube = MemCube.load(folder, self._new_textual_memory().embedder, model=self._model)
                if (cube.cube_id, cube.owner) != (cube_id, owner):
                    raise DataError(
                        f"{folder}: holds cube {cube.cube_id!r} of {cube.owner!r}, the registry says {cube_id!r} of {owner!r}"
                    )
            if self.durable:  # the dump, then every change since it (replaying one the dump holds changes nothing)
                changes = self._journal(cube_id).changes(0)
                cube.text.apply_stored(changes.items)
                self._seen[cube_id] = changes.head
        self._cube_stamps[cube_id] = stamp
        return cube

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
        self._sync()
        self._require_user(caller)
        self._cube(cube_id)
        self._follow(cube_id)
        if not self._may(caller, cube_id, mode):
            raise AccessDeniedError(f"user {caller!r} may not {mode} cube {cube_id!r}")


def _slot_name(slot: str) -> str:
    if slot not in SLOTS:
        raise ConfigError(f"unknown cube slot {slot!r}; valid: {list(SLOTS)}")
    return slot


def _stamp(path: Path) -> Stamp:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _check_user_id(user: object, what: str) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_ID_CHARS or not user.isprintable():
        raise ConfigError(f"{what} {str(user)[:MAX_ID_CHARS]!r}: use 1 to {MAX_ID_CHARS} printable characters")
    return user


def _check_cube_id(cube_id: object, what: str) -> str:
    if not isinstance(cube_id, str) or len(cube_id) > MAX_ID_CHARS or not _CUBE_ID.fullmatch(cube_id):
        raise ConfigError(
            f"{what} {str(cube_id)[:MAX_ID_CHARS]!r}: use 1 to {MAX_ID_CHARS} letters, digits, '_', '-' and '.' (not first)"
        )
    return cube_id


class _CubeEntry(TypedDict):
    owner: str
    shares: dict[str, str]


class _Registry(TypedDict):
    users: list[str]
    cubes: dict[str, _CubeEntry]


def _read_registry(path: Path) -> tuple[set[str], dict[str, tuple[str, dict[str, str]]]]:
    """Users and cubes (owner, shares) of a registry file, every id and mode checked: it may not be ours."""
    try:
        registry = read_json_file(path)  # bounded, strict, never through a link
        check_json(registry, _Registry, str(path))
        users = {_check_user_id(user, "user id") for user in registry["users"]}
        cubes = {
            _check_cube_id(cube_id, "cube id"): (
                _check_user_id(entry["owner"], f"cube {cube_id!r}: owner"),
                {
                    _check_user_id(user, f"cube {cube_id!r}: shared with"): mode
                    for user, mode in entry["shares"].items()
                },
            )
            for cube_id, entry in registry["cubes"].items()
        }
    except ConfigError as error:
        raise DataError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise DataError(f"{path}: unreadable MOS registry ({type(error).__name__}: {error})") from None
    for cube_id, (owner, shares) in cubes.items():
        unknown = sorted(set(shares.values()) - set(MODES))
        if unknown or owner not in users or not set(shares) <= users:
            raise DataError(f"{path}: cube {cube_id!r} names unknown users or share modes {unknown}")
    return users, cubes
