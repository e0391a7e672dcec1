"""The oracle every fuzz family shares: an audit hook that records code runs, file changes and reads
outside the allowed folders; a deadline; a stdout capture; and how an example ended."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import site
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from memos_lab.errors import MemosError

# Audit events that run a program or code; any of them during a load counts as a code execution.
RUN_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "exec"})
# Audit events that change files: a code execution unless inside the sample or the datasets cache.
WRITE_EVENTS = frozenset(
    {
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "shutil.rmtree",
        "shutil.copyfile",
        "os.symlink",
        "os.link",
        "os.truncate",
    }
)
FINDINGS = ("raw", "hang", "injection")
DEADLINE_S = 20.0
MEMORY_LIMIT_BYTES = 8 << 30  # address space: a load that tries to allocate more fails (counted as a raw error)


@contextlib.contextmanager
def limited_memory(limit: int) -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Sentinel:
    """A class outside memos_lab's trusted registry: building it proves a `_target_` was obeyed."""

    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Sentinel.built += 1


class _Hang(Exception):
    pass


class Finding(Exception):
    """Raised by an example's own check: what it saw is wrong (`kind` is an Outcome result, e.g. "injection")."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass
class Outcome:
    target: str
    mutation: str
    result: str  # "ok", "refused" (one MemosError line); findings: "raw", "hang", "injection"
    message: str = ""
    code_executions: list[str] = field(default_factory=list)
    outside_reads: list[str] = field(default_factory=list)
    changed: bool = False

    @property
    def bad(self) -> bool:
        return self.result in FINDINGS or bool(self.code_executions or self.outside_reads or self.changed)


class Guard:
    """Records forbidden audit events while active (one process-wide audit hook, installed once)."""

    _installed: Guard | None = None

    def __init__(self, allowed_roots: list[Path], writable_roots: list[Path]) -> None:
        self.allowed = [str(Path(p).resolve()) for p in allowed_roots]
        self.writable = [str(Path(p).resolve()) for p in writable_roots]
        self.active = False
        self.executions: list[str] = []
        self.outside: list[str] = []
        if Guard._installed is None:
            sys.addaudithook(_dispatch)
        Guard._installed = self

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if flags & os.O_NOFOLLOW:  # a final link is refused by the open itself, never followed
                path = os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
            else:
                path = os.path.realpath(path)
            if not _inside(path, self.allowed):
                self.outside.append(path)
        elif event == "exec" and _importing():
            return  # a module imported for the first time runs its own code: ours or an installed library's
        elif event == "exec" and _declaring():
            return  # typing evaluating our string annotations, dataclasses making a class's methods
        elif event in RUN_EVENTS:
            self.executions.append(f"{event} {str(args)[:120]}")
        elif event in WRITE_EVENTS:
            paths = [os.fsdecode(a) for a in args if isinstance(a, str | bytes | os.PathLike)]
            if any(
                isinstance(a, int) and a >= 0 for a in args
            ):  # relative to a folder descriptor, whose open was checked
                paths = [p for p in paths if os.path.isabs(p)]
            if not all(_inside(os.path.realpath(p), self.writable) for p in paths):
                self.executions.append(f"{event} {str(args)[:120]}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.executions, self.outside = [], []
        self.active = True
        try:
            yield
        finally:
            self.active = False


def library_roots() -> list[Path]:
    """Folders an example may read besides its own: Python, the installed libraries, memos_lab, this harness."""
    import memos_lab

    return [
        Path(sys.prefix),
        Path(sys.base_prefix),
        *(Path(p).resolve() for p in [*site.getsitepackages(), *sys.path] if p and os.path.isdir(p)),
        Path(memos_lab.__file__).resolve().parent,
        Path(__file__).resolve().parent,
        Path("/proc"),
        Path("/sys"),
        Path("/dev/null"),
        Path("/dev/urandom"),
    ]


def observe(guard: Guard, target: str, mutation: str, action: Callable[[], object], deadline_s: float) -> Outcome:
    """Run `action` under the guard, with an alarm at `deadline_s` and stdout captured; say how it ended.

    One MemosError line is a refusal; a Finding raised by the action's own checks is that finding; any other
    exception is a raw traceback. The alarm needs `action` to run on the main thread."""
    outcome = Outcome(target, mutation, "ok")
    stdout = io.StringIO()
    Sentinel.built = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, deadline_s)
    try:
        with guard.watching(), contextlib.redirect_stdout(stdout):
            action()
    except _Hang:
        outcome.result = "hang"
    except Finding as finding:
        outcome.result, outcome.message = finding.kind, str(finding)[:300]
    except MemosError as error:
        message = str(error)
        outcome.result, outcome.message = ("refused", message) if "\n" not in message.strip() else ("raw", message)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        outcome.result, outcome.message = "raw", f"{type(error).__name__}: {str(error)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    outcome.code_executions = list(guard.executions)
    if stdout.getvalue().strip():
        outcome.code_executions.append(f"stdout: {stdout.getvalue()[:80]!r}")
    if Sentinel.built:
        outcome.code_executions.append("a planted _target_ was built")
    outcome.outside_reads = list(guard.outside)
    return outcome


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    if Guard._installed is not None:
        Guard._installed.hook(event, args)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _declaring() -> bool:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        name = os.path.basename(frame.f_code.co_filename)
        if (name == "typing.py" and frame.f_code.co_name in ("_evaluate", "get_type_hints")) or (
            name == "dataclasses.py" and frame.f_code.co_name == "_create_fn"
        ):
            return True
        frame = frame.f_back
    return False


def _importing() -> bool:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def tree_digest(folder: Path) -> str:
    """A digest of every name, link target and file content under `folder` (never following links), lock
    files aside."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".lock"):  # writers' lock files (a MOS root takes one to open), not stored data
            continue
        digest.update(str(path.relative_to(folder)).encode("utf-8", "surrogatepass"))
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
