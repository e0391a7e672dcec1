"""Opening the target cube of a `load`: an existing one (checked, and owned by the caller) or a new one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from memos_lab.cube import MANIFEST_FILE, MemCube, read_manifest
from memos_lab.errors import AccessDeniedError, ConfigError
from memos_lab.locking import hold_writer_lock
from memos_lab.models.embedder import Embedder
from memos_lab.settings import Settings

Loader = Callable[[DictConfig], dict[str, Any]]


@dataclass(frozen=True)
class LoaderSettings(Settings):
    """A `memory_type=` choice: the loader it runs. The load command's own keys (user, cube_dir, input,
    batch_size...) live in conf/load.yaml; a loader with settings of its own extends these."""

    section: ClassVar[str] = "memory_type"
    instantiated: ClassVar[bool] = False
    declared_in_yaml: ClassVar[tuple[str, ...]] = ("fn",)
    fn: str = "???"


def required(cfg: DictConfig, key: str) -> str:
    """A top-level setting the user must give on the command line (`???` in conf/load.yaml)."""
    value = None if OmegaConf.is_missing(cfg, key) else cfg.get(key)
    if value is None or not str(value).strip():
        raise ConfigError(f"load needs {key}=...")
    return str(value)


def positive_int(value: object, key: str) -> int:
    """A count from the command line: a positive integer, or a ConfigError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def cube_writer(load: Loader) -> Loader:
    """Run a loader holding the cube folder's writer lock, from reading the cube to writing it back, so
    two loads into one cube run one after the other (each sees the other's items) or the second fails."""

    @functools.wraps(load)
    def locked(cfg: DictConfig) -> dict[str, Any]:
        with hold_writer_lock(Path(required(cfg, "cube_dir")), cfg.lock_timeout_s):
            return load(cfg)

    return locked


def open_cube(cfg: DictConfig, embedder: Embedder) -> tuple[MemCube, bool]:
    """The cube at `cfg.cube_dir` (loaded, or new with backend `cfg.memory`), and whether it is new.

    A cube owned by another user is refused before anything is read into it; a folder that holds
    something other than a cube is never overwritten.
    """
    user = required(cfg, "user")
    folder = Path(required(cfg, "cube_dir"))
    if folder.exists() and (any(folder.iterdir()) or (folder / MANIFEST_FILE).exists()):
        manifest = read_manifest(folder)
        if manifest["owner"] != user:
            raise AccessDeniedError(
                f"cube at {folder} belongs to {manifest['owner']!r}; user {user!r} may not write into it"
            )
        model = hydra.utils.instantiate(cfg.model) if manifest["slots"] else None
        return MemCube.load(folder, embedder, model=model), False
    return MemCube.create(user, hydra.utils.instantiate(cfg.memory, embedder=embedder)), True


def save_cube(cfg: DictConfig, cube: MemCube, created: bool) -> dict[str, Any]:
    """Dump the cube back to `cfg.cube_dir` (crash-safe) and return the summary lines every loader prints."""
    cube.dump(Path(cfg.cube_dir))
    return {"cube_dir": str(cfg.cube_dir), "cube_id": cube.cube_id, "owner": cube.owner, "created": created}
