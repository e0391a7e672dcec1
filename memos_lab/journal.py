"""The journal of a durable MOS: each cube's item changes since its last dump, committed before a write returns.

`root/journal/<cube id>.sqlite` (SQLite, WAL mode, synchronous=FULL):

    items(id, seq, text, metadata, embedding)   the latest state of every item changed since the cube's
                                                dump (text NULL: purged), `seq` numbering the changes
    positions(name, seq)                        `base`: changes up to it are in the dump; `head`: the last one

One write of the MOS is one SQLite transaction (`writing`): the rows of every item it changed and the new
head commit together or not at all, so a kill at any moment leaves each write whole or absent. The
transaction's lock also orders writers of one cube across processes, and readers see a consistent snapshot
(`changes`). Replaying rows is idempotent (each row is an item's whole state), so a checkpoint that dumped
the cube but died before moving `base` only replays what the dump already holds.

A journal file may not be ours: a link or a special file is refused, the schema must be exactly ours (no
views, no triggers), and every row is checked by `item_from_row` like the dump's items.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from memos_lab.errors import BusyError, DataError
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.textual.storage import item_from_row, item_row

JOURNAL_DIR = "journal"
SUFFIX = ".sqlite"
_SCHEMA = {
    "items": "CREATE TABLE items (id TEXT PRIMARY KEY, seq INTEGER UNIQUE NOT NULL, text TEXT,"
    " metadata TEXT, embedding BLOB)",
    "positions": "CREATE TABLE positions (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
}
_SIDE_FILES = ("", "-wal", "-shm")


@dataclass(frozen=True)
class Changes:
    """What a reader adopts: the journal's positions and the rows after a given seq (None: purged)."""

    base: int
    head: int
    items: list[tuple[str, MemoryItem | None]]


class CubeJournal:
    """One cube's journal, opened read-write by one process (several processes may each open it)."""

    def __init__(self, path: Path, dim: int, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.dim = dim
        try:
            self._db = open_store(self.path, busy_timeout_s)
            self._create_or_check()
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise BusyError(f"{self.path}: another process holds the journal ({error})") from None
            raise DataError(f"{self.path}: not a usable journal ({error})") from None
        except sqlite3.DatabaseError as error:
            raise DataError(f"{self.path}: not a usable journal ({error})") from None

    def _create_or_check(self) -> None:
        with self._transaction("BEGIN IMMEDIATE"):
            found = dict(self._db.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
            if not found:
                for sql in _SCHEMA.values():
                    self._db.execute(sql)
                self._db.executemany("INSERT INTO positions VALUES (?, 0)", [("base",), ("head",)])
                return
            if found != _SCHEMA:  # no views, no triggers, no other columns
                raise DataError(f"{self.path}: not a memos_lab journal (tables {sorted(found)})")
            names = {name for (name,) in self._db.execute("SELECT name FROM positions")}
            if names != {"base", "head"}:
                raise DataError(f"{self.path}: positions {sorted(names)} are not base and head")

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        self._db.execute(begin)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction, unless this connection is inside one already (a writer following first)."""
        if self._db.in_transaction:
            yield
        else:
            with self._transaction("BEGIN"):
                yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        """One write: holds the journal's write lock (other processes' writers wait); commits on success."""
        try:
            with self._transaction("BEGIN IMMEDIATE"):
                yield
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise BusyError(f"{self.path}: another writer held the journal too long ({error})") from None
            raise DataError(f"{self.path}: journal write failed ({error})") from None

    def record(self, items: Sequence[MemoryItem], purged: Sequence[str] = ()) -> int:
        """Inside `writing`: store the new state of `items` and the purge of `purged`; returns the new head."""
        head = self._position("head")
        rows: list[tuple[object, ...]] = [(head + n + 1, *item_row(item)) for n, item in enumerate(items)]
        rows += [(head + len(rows) + n + 1, item_id, None, None, None) for n, item_id in enumerate(purged)]
        self._db.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", (_json_ids(rows),))
        self._db.executemany("INSERT INTO items (seq, id, text, metadata, embedding) VALUES (?, ?, ?, ?, ?)", rows)
        head += len(rows)
        self._db.execute("UPDATE positions SET seq = ? WHERE name = 'head'", (head,))
        return head

    def checkpoint(self, seq: int) -> None:
        """Inside `writing`, once the cube's dump holds every change up to `seq`: forget those changes."""
        self._db.execute("DELETE FROM items WHERE seq <= ?", (seq,))
        self._db.execute("UPDATE positions SET seq = ? WHERE name = 'base'", (seq,))

    def reset(self) -> None:
        """Inside `writing`: forget everything (a new cube of this id; any rows are a former one's leftovers)."""
        self._db.execute("DELETE FROM items")
        self._db.execute(
            "UPDATE positions SET seq = (SELECT seq FROM positions WHERE name = 'head') WHERE name = 'base'"
        )

    def head(self) -> int:
        return self._position("head")

    def changes(self, after: int) -> Changes:
        """The positions and every row after `after`, read from one snapshot."""
        with self._snapshot():
            base, head = self._position("base"), self._position("head")
            rows = self._db.execute(
                "SELECT id, text, metadata, embedding FROM items WHERE seq > ? ORDER BY seq", (after,)
            ).fetchall()
        if not 0 <= base <= head:
            raise DataError(f"{self.path}: positions base {base}, head {head} are out of order")
        return Changes(base, head, [self._row(*row) for row in rows])

    def _row(self, item_id: object, text: object, metadata: object, blob: object) -> tuple[str, MemoryItem | None]:
        if text is None:
            if not isinstance(item_id, str) or metadata is not None or blob is not None:
                raise DataError(f"{self.path}: a purge row of {str(item_id)[:80]!r} holds data")
            return item_id, None
        item = item_from_row(self.path, self.dim, item_id, text, metadata, blob)
        return item.id, item

    def _position(self, name: str) -> int:
        row = self._db.execute("SELECT seq FROM positions WHERE name = ?", (name,)).fetchone()
        if row is None or isinstance(row[0], bool) or not isinstance(row[0], int):
            raise DataError(f"{self.path}: position {name!r} is missing or not an integer")
        return int(row[0])

    def close(self) -> None:
        self._db.close()


def open_store(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A read-write SQLite store of ours (journal, tokens) in WAL mode, where a commit is on disk before it
    returns; in autocommit mode (transactions are begun explicitly). Links and special files are refused;
    the schema inside is the caller's to check (sqlite3.DatabaseError if it is not SQLite at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in _SIDE_FILES:
        refuse_non_regular(Path(f"{path}{suffix}"))
    db = sqlite3.connect(
        f"file:{quote(str(path.absolute()))}?nofollow=1",
        uri=True,
        isolation_level=None,
        timeout=busy_timeout_s,
        check_same_thread=False,
    )
    try:
        db.execute("PRAGMA trusted_schema = OFF")  # a foreign schema's functions never run
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
    except BaseException:
        db.close()
        raise
    return db


def open_table(path: Path, busy_timeout_s: float, schema: str, what: str) -> sqlite3.Connection:
    """`open_store` of a one-table store (the service's tokens, jobs): the table is created in a new file, and
    a file holding anything but exactly that table is refused (DataError naming `what` it should be)."""
    try:
        db = open_store(path, busy_timeout_s)
        db.execute("BEGIN IMMEDIATE")
        found = [sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        if not found:
            db.execute(schema)
        db.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DataError(f"{path}: not a usable {what} ({error})") from None
    if found and found != [schema]:
        db.close()
        raise DataError(f"{path}: not a memos_lab {what} (no views, triggers or other tables)")
    return db


def journal_path(root: Path, cube_id: str) -> Path:
    return Path(root) / JOURNAL_DIR / f"{cube_id}{SUFFIX}"


def _json_ids(rows: Sequence[tuple[object, ...]]) -> str:
    return json.dumps([row[1] for row in rows])


def refuse_non_regular(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file; a journal is never read through a link or special file")
