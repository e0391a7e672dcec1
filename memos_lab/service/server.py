"""Building and running the service from its composed config (conf/serve.yaml)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from memos_lab.errors import ConfigError
from memos_lab.mos import MOS
from memos_lab.service.batching import SerialEmbedder
from memos_lab.service.settings import McpSettings, ServeSettings

if TYPE_CHECKING:
    from memos_lab.service.weights import LocalModel

CONFIG_VARIABLE = "MEMOS_LAB_SERVE_CONFIG"  # the composed config, handed to each uvicorn worker process


def serve_settings(cfg: DictConfig) -> ServeSettings:
    settings = ServeSettings.from_mapping(cfg.serve)
    if settings.workers > 1 and cfg.get("model") is not None:
        raise ConfigError(
            f"serve.workers={settings.workers} with model=: a model's cube slots and jobs live in one process; "
            "use serve.workers=1 (or no model)"
        )
    return settings


def mcp_settings(cfg: DictConfig) -> McpSettings:
    return McpSettings.from_mapping(cfg.mcp)


def local_model(cfg: DictConfig) -> LocalModel | None:
    """The configured `model=` (None without one), which must be a model with its weights in this process."""
    import hydra.utils

    from memos_lab.models.llm import LanguageModel
    from memos_lab.service.weights import LocalModel

    if cfg.get("model") is None:
        return None
    model = hydra.utils.instantiate(cfg.model)
    if not isinstance(model, LanguageModel):
        raise ConfigError(
            f"model={cfg.model.get('_target_')} is not a local model: activation caches and parametric edits "
            "need the weights in the server's process (a served model cannot hold them)"
        )
    return LocalModel(model, cfg.activation, cfg.parametric)


def open_mos(cfg: DictConfig, model: Any | None = None) -> MOS:
    """The durable MOS on `cfg.root` with the configured text memory and embedder (and `model`, which cubes
    with activation or parametric memory need to load)."""
    import hydra.utils

    from memos_lab.runner import prepare_environment

    prepare_environment()
    if cfg.get("threads"):  # one thread per server process: on a busy machine more threads wait on each other
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(cfg.threads))
        # numpy's BLAS too: a search's one query against the cube's matrix took ~15 ms with OpenBLAS's two
        # threads on the loaded 2-core machine, 0.1 ms with one (results/service/README.md)
        threadpool_limits(int(cfg.threads), user_api="blas")
    root = Path(str(cfg.root)).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"root={root} is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    embedder = SerialEmbedder(hydra.utils.instantiate(cfg.embedder))  # the server encodes on two threads
    return MOS(
        lambda: hydra.utils.instantiate(cfg.memory, embedder=embedder),
        root=root,
        model=model,
        lock_timeout_s=serve_settings(cfg).lock_timeout_s,
        durable=True,
    )


def build_app(cfg: DictConfig) -> Any:
    from memos_lab.service.app import create_app
    from memos_lab.service.auth import TokenStore
    from memos_lab.service.jobs import JobRunner, JobStore

    settings = serve_settings(cfg)
    local = local_model(cfg)
    mos = open_mos(cfg, None if local is None else local.model)
    assert mos.root is not None  # open_mos gives it one
    tokens = TokenStore(mos.root, settings.scrypt_n, settings.scrypt_r, settings.lock_timeout_s)
    jobs = JobRunner(JobStore(mos.root, settings.lock_timeout_s), settings.max_queued_jobs)
    admin_token = os.environ.get(settings.admin_token_env) or None
    if admin_token is None:
        logging.getLogger("memos_lab.service").warning(
            "$%s is unset: the admin endpoints (users, tokens) are off", settings.admin_token_env
        )
    return create_app(mos, tokens, settings, admin_token, jobs, local)


def app_from_environment() -> Any:
    """uvicorn's factory in each worker process: the config the `serve` command composed."""
    text = os.environ.get(CONFIG_VARIABLE)
    if not text:
        raise ConfigError(f"${CONFIG_VARIABLE} is unset; start the server with `python -m memos_lab serve`")
    cfg = OmegaConf.create(text)
    assert isinstance(cfg, DictConfig)
    return build_app(cfg)


def run_server(cfg: DictConfig) -> None:
    import uvicorn

    settings = serve_settings(cfg)
    os.environ[CONFIG_VARIABLE] = OmegaConf.to_yaml(cfg, resolve=True)
    print(f"serving MOS root {cfg.root} on http://{settings.host}:{settings.port} (docs at /docs)", flush=True)
    uvicorn.run(
        "memos_lab.service.server:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning",
        access_log=False,
    )


class ServerProcess:
    """`python -m memos_lab serve` as a child process on 127.0.0.1 at a free port (tests, load runs):
    `start()` waits until it answers, `kill()` is `kill -9`, `stop()` a clean shutdown."""

    def __init__(self, root: Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        from memos_lab.generation.serve import free_port

        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.overrides = [f"root={self.root}", "serve.host=127.0.0.1", f"serve.port={self.port}", *overrides]
        self.env = {**os.environ, **(env or {})}
        self.log_path = self.root.parent / f"{self.root.name}.serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, startup_s: float = 300.0) -> ServerProcess:
        command = [sys.executable, "-m", "memos_lab", "serve", *self.overrides]
        with open(self.log_path, "ab") as log:
            # its own process group: a kill reaches the uvicorn workers too
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-400:]
                raise ConfigError(f"the server exited with status {self.process.returncode}: {' '.join(tail.split())}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.kill()
        raise ConfigError(f"the server did not answer /v1/health within {startup_s:.0f} s (log: {self.log_path})")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed by the server itself."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
