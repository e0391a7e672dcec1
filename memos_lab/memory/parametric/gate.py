"""Retrieval gate of a parametric memory: apply the adapter only to queries that concern an edited fact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from memos_lab.artifact import check_json, trusted_settings
from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError
from memos_lab.models.embedder import Embedder

KEYS = ("subject", "prompt")
# Embedder settings that name places on this machine: a stored gate may not choose them (a model folder
# could bring code, a cache or export folder is written to); a saved gate keeps no cache folder.
LOCAL_PATHS = ("model_path", "cache_dir", "export_dir")
MAX_STORED_SIZE = 1 << 16


class GateSettings(TypedDict):
    embedder: dict[str, Any]
    threshold: float
    key: str


class EditGate:
    """Nearest edit key by cosine similarity; the adapter applies when it reaches `threshold`.

    Keys are the edits' subjects (default) or prompts: a subject key keeps neighbours of the same
    relation ("Y lives in") outside, a prompt key also fires on the relation alone. The embedder is
    kept as its config (a registered embedder class and plain settings, built directly, never through
    Hydra) so a saved memory can rebuild the same gate without pickling a model or running named code.
    """

    def __init__(self, embedder: Mapping[str, Any] | DictConfig, threshold: float = 0.5, key: str = "subject") -> None:
        if key not in KEYS:
            raise ConfigError(f"gate.key: unknown {key!r}; valid: {', '.join(KEYS)}")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"gate.threshold must be a cosine similarity in [-1, 1], got {threshold}")
        config = (
            cast(Mapping[str, Any], OmegaConf.to_container(embedder, resolve=True))
            if isinstance(embedder, DictConfig)
            else embedder
        )
        self._embedder_class, self._embedder_settings = trusted_settings(config, "embedder", "gate.embedder")
        self.embedder_config: dict[str, Any] = dict(config)
        self.threshold = float(threshold)
        self.key = key
        self._embedder: Embedder | None = None
        self._keys: list[str] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # built on first use: a gate loaded from disk may never be asked
            self._embedder = self._embedder_class(**self._embedder_settings)
        return self._embedder

    def add(self, edits: Sequence[KnowledgeEdit]) -> None:
        new = [getattr(edit, self.key) for edit in edits if getattr(edit, self.key) not in self._keys]
        if not new:
            return
        vectors = self.embedder.encode(new)
        self._vectors = vectors if not self._keys else np.vstack([self._vectors, vectors])
        self._keys.extend(new)

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Highest key similarity of each prompt (-1 when there are no keys)."""
        if not self._keys or not prompts:
            return np.full(len(prompts), -1.0, dtype=np.float32)
        return (self.embedder.encode(prompts) @ self._vectors.T).max(axis=1)

    def applies(self, prompts: Sequence[str]) -> list[bool]:
        return [bool(score >= self.threshold) for score in self.scores(prompts)]

    def settings(self) -> dict[str, Any]:
        embedder = {k: None if k == "cache_dir" else v for k, v in self.embedder_config.items()}
        return {"embedder": embedder, "threshold": self.threshold, "key": self.key}

    @classmethod
    def from_stored(cls, settings: Any, where: str) -> EditGate:
        """The gate of a saved memory's `settings()`, checked as untrusted data."""
        check_json(settings, GateSettings, where)
        for key, value in settings["embedder"].items():
            if key in LOCAL_PATHS and value is not None:
                raise DataError(f"{where}.embedder.{key}: a stored gate cannot name a path on this machine")
            if isinstance(value, int) and not 0 < value <= MAX_STORED_SIZE:  # dim, batch size: no memory bomb
                raise DataError(f"{where}.embedder.{key}: {value} is outside 1..{MAX_STORED_SIZE}")
        return cls(settings["embedder"], settings["threshold"], settings["key"])
