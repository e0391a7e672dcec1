"""Long work (a parametric edit trains for seconds to minutes) as jobs: queued, run one at a time by a
background thread of the server, their status kept in `root/service/jobs.sqlite` (WAL, a commit is on disk
before it returns).

A job is reported `done` only after its work returned, which for an edit means the cube with its new adapter
is saved. A server killed mid-job cannot say so itself, so each server process holds an exclusive lock on
`root/service/instances/<instance>.lock` for its life; a job still `queued` or `running` whose server no
longer holds its lock (the kernel dropped it with the process) is reported `failed`, never `done`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memos_lab.errors import DataError, MemosError, NotFoundError
from memos_lab.journal import open_table
from memos_lab.service.auth import RateLimitedError

JOBS_FILE = "service/jobs.sqlite"
INSTANCES_DIR = "service/instances"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
LOST = "the server stopped before the job finished (killed or restarted); whether its changes were saved is unknown, submit it again"
_SCHEMA = (
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, user TEXT NOT NULL, cube_id TEXT NOT NULL, kind TEXT NOT NULL,"
    " instance TEXT NOT NULL, status TEXT NOT NULL, submitted_at REAL NOT NULL, started_at REAL,"
    " finished_at REAL, error TEXT, result TEXT)"
)
_INSTANCE = re.compile(r"[0-9a-f]{16}")
_MAX_ERROR = 300
log = logging.getLogger("memos_lab.service")


class QueueFullError(RateLimitedError):
    """The job queue holds its limit of waiting jobs (429)."""


@dataclass(frozen=True)
class Job:
    job_id: str
    user: str
    cube_id: str
    kind: str
    status: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    result: dict[str, Any] | None


class JobStore:
    """The jobs of one root, as rows; this process's instance lock taken on open."""

    def __init__(self, root: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(root) / JOBS_FILE
        self.instances = Path(root) / INSTANCES_DIR
        self._lock = threading.Lock()
        self._db = open_table(self.path, busy_timeout_s, _SCHEMA, "job store")
        self.instance = secrets.token_hex(8)
        self.instances.mkdir(parents=True, exist_ok=True)
        self._instance_fd = os.open(
            self.instances / f"{self.instance}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
        )
        fcntl.flock(self._instance_fd, fcntl.LOCK_EX)  # held until this process ends
        for job_id, instance in self._rows("SELECT id, instance FROM jobs WHERE status IN (?, ?)", QUEUED, RUNNING):
            self._fail_if_orphaned(str(job_id), str(instance))

    def submit(self, user: str, cube_id: str, kind: str) -> Job:
        job_id = secrets.token_hex(8)
        self._execute(
            "INSERT INTO jobs (id, user, cube_id, kind, instance, status, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            job_id, user, cube_id, kind, self.instance, QUEUED, time.time(),
        )  # fmt: skip
        return self._job(job_id)

    def start(self, job_id: str) -> None:
        self._execute("UPDATE jobs SET status = ?, started_at = ? WHERE id = ?", RUNNING, time.time(), job_id)

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._execute(
            "UPDATE jobs SET status = ?, finished_at = ?, result = ? WHERE id = ?",
            DONE, time.time(), json.dumps(result, sort_keys=True), job_id,
        )  # fmt: skip

    def fail(self, job_id: str, error: str) -> None:
        line = " ".join(error.split())[:_MAX_ERROR]
        self._execute(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?", FAILED, time.time(), line, job_id
        )

    def get(self, user: str, job_id: str) -> Job:
        """The job `job_id` if `user` submitted it (anyone else is told it does not exist)."""
        job = self._job(job_id)
        if job.user != user:
            raise NotFoundError(f"no job {job_id[:40]!r}")
        return job

    def close(self) -> None:
        self._db.close()
        os.close(self._instance_fd)

    # ---- rows -----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        rows = self._rows(
            "SELECT id, user, cube_id, kind, instance, status, submitted_at, started_at, finished_at, error, result"
            " FROM jobs WHERE id = ?",
            job_id,
        )
        if not rows:
            raise NotFoundError(f"no job {job_id[:40]!r}")
        row = rows[0]
        if row[5] in (QUEUED, RUNNING) and self._fail_if_orphaned(str(row[0]), str(row[4])):
            return self._job(job_id)
        try:
            result = None if row[10] is None else json.loads(str(row[10]))
            return Job(
                str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[5]), float(str(row[6])),
                _float(row[7]), _float(row[8]), None if row[9] is None else str(row[9]), result,
            )  # fmt: skip
        except (ValueError, TypeError) as error:
            raise DataError(f"{self.path}: job {job_id!r} holds an unreadable row ({error})") from None

    def _fail_if_orphaned(self, job_id: str, instance: str) -> bool:
        """Mark a queued or running job failed if the server process that took it is gone; whether it was."""
        if instance == self.instance or (_INSTANCE.fullmatch(instance) and self._alive(instance)):
            return False
        self._execute(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ? AND status IN (?, ?)",
            FAILED, time.time(), LOST, job_id, QUEUED, RUNNING,
        )  # fmt: skip
        return True

    def _alive(self, instance: str) -> bool:
        try:
            fd = os.open(self.instances / f"{instance}.lock", os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # its server holds it
        finally:
            os.close(fd)  # also releases the lock just taken
        (self.instances / f"{instance}.lock").unlink(missing_ok=True)
        return False

    def _execute(self, sql: str, *args: object) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))


class JobRunner:
    """One background thread that runs the submitted jobs in order; at most `max_queued` wait."""

    def __init__(self, store: JobStore, max_queued: int) -> None:
        self.store = store
        self.max_queued = max_queued
        self._queue: queue.Queue[tuple[str, Callable[[], dict[str, Any]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="memos_lab-jobs", daemon=True)
        self._thread.start()

    def submit(self, user: str, cube_id: str, kind: str, work: Callable[[], dict[str, Any]]) -> Job:
        if self._queue.qsize() >= self.max_queued:
            raise QueueFullError(
                f"the job queue is full ({self.max_queued} waiting, serve.max_queued_jobs); retry when one is done",
                retry_after_s=5.0,
            )
        job = self.store.submit(user, cube_id, kind)
        self._queue.put((job.job_id, work))
        return job

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            job_id, work = task
            try:
                self.store.start(job_id)
                result = work()
            except MemosError as error:
                self.store.fail(job_id, str(error))
            except Exception as error:  # the job fails in one line; the traceback goes to the server's log
                incident = secrets.token_hex(4)
                log.error("internal error %s in job %s", incident, job_id, exc_info=error)
                self.store.fail(job_id, f"internal error (incident {incident}; the server's log has the details)")
            else:
                self.store.finish(job_id, result)
