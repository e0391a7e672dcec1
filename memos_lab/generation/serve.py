"""Start a local `transformers serve` for a model folder (tests and benchmarks of the served backend).

The server runs offline (HF_HUB_OFFLINE=1) on 127.0.0.1 at a free port, pinned to the folder, with
HF_HUB_CACHE pointed at an existing folder (its /v1/models answers 500 when that cache folder is missing).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from memos_lab.errors import ConfigError

_LAUNCH = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def transformers_serve(
    folder: str | Path, device: str = "cpu", extra_args: Sequence[str] = (), startup_s: float = 180.0
) -> Iterator[str]:
    """Serve `folder` while the block runs; yields the base URL (`http://127.0.0.1:PORT/v1`)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memos-serve-") as scratch:
        hub_cache = Path(scratch) / "hub"
        hub_cache.mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "TRANSFORMERS_VERBOSITY": "error"}
        log_path = Path(scratch) / "serve.log"
        command = [sys.executable, "-c", _LAUNCH, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                   "--device", device, *extra_args]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(port, process, startup_s, log_path)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(port: int, process: subprocess.Popen, startup_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-400:]
            raise ConfigError(f"transformers serve exited with status {process.returncode}: {' '.join(tail.split())}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ConfigError(f"transformers serve did not answer /health within {startup_s:.0f} s")
