"""One call from Python to a configured MOS, composed from the same configs as `python -m memos_lab`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from memos_lab.mos import MOS


def build_mos(
    memory: str = "general_text",
    embedder: str = "minilm",
    root: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    config: DictConfig | None = None,
    model: Any | None = None,
    lock_timeout_s: float = 60.0,
) -> MOS:
    """A MOS whose cubes hold the `memory=` backend over the `embedder=` embedder.

    memory, embedder: config choices, as on the command line (`memory=vector`), including those of the
        user's own config folders (MEMOS_LAB_CONFIG_PATH).
    root: a folder that keeps users, shares and cubes across restarts (None: in memory only).
    overrides: further Hydra overrides, checked as the CLI checks them (`["memory.fusion=bm25"]`).
    config: a composed config (e.g. an experiment's `cfg`) whose `memory` and `embedder` nodes are used
        instead of composing one; `memory`, `embedder` and `overrides` are then ignored.
    model: the language model that cubes with activation or parametric memory need to load.
    """
    import hydra.utils

    cfg = config if config is not None else _compose([f"memory={memory}", f"embedder={embedder}", *overrides])
    shared_embedder = hydra.utils.instantiate(cfg.embedder)
    return MOS(
        lambda: hydra.utils.instantiate(cfg.memory, embedder=shared_embedder),
        root=None if root is None else Path(root),
        model=model,
        lock_timeout_s=lock_timeout_s,
    )


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from memos_lab.cli import CONFIG_NAME, validate_overrides
    from memos_lab.settings import CONF_DIR, search_path_overrides

    validate_overrides(overrides)  # one line naming a bad choice or setting, as the CLI gives
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[*search_path_overrides(), *overrides])
