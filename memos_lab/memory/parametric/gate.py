"""Retrieval gate of a parametric memory: apply the adapter only to queries that concern an edited fact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
import numpy as np
from omegaconf import DictConfig, OmegaConf

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError
from memos_lab.models.embedder import Embedder

KEYS = ("subject", "prompt")


class EditGate:
    """Nearest edit key by cosine similarity; the adapter applies when it reaches `threshold`.

    Keys are the edits' subjects (default) or prompts: a subject key keeps neighbours of the same
    relation ("Y lives in") outside, a prompt key also fires on the relation alone. The embedder is
    kept as its Hydra config so a saved memory can rebuild the same gate without pickling a model.
    """

    def __init__(self, embedder: Mapping[str, Any] | DictConfig, threshold: float = 0.5, key: str = "subject") -> None:
        if key not in KEYS:
            raise ConfigError(f"gate.key: unknown {key!r}; valid: {', '.join(KEYS)}")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"gate.threshold must be a cosine similarity in [-1, 1], got {threshold}")
        config = OmegaConf.to_container(embedder, resolve=True) if isinstance(embedder, DictConfig) else dict(embedder)
        if "_target_" not in config:
            raise ConfigError("gate.embedder must be an embedder config with a _target_")
        self.embedder_config: dict[str, Any] = config
        self.threshold = float(threshold)
        self.key = key
        self._embedder: Embedder | None = None
        self._keys: list[str] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # built on first use: a gate loaded from disk may never be asked
            self._embedder = hydra.utils.instantiate(self.embedder_config)
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
        return {"embedder": self.embedder_config, "threshold": self.threshold, "key": self.key}
