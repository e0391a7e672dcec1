"""`memory=mem0`: mem0's open-source `Memory` (pip install -e ".[peers]") as a memos_lab textual backend.

- mem0 embeds with memos_lab's own embedder (the object every backend of the run shares), so both systems
  index identical vectors; its own embedding and LLM clients are pointed at a closed local port and never
  used, except the LLM with `infer=true`, which goes to the served model `llm_base_url` names.
- Its vector store is a local faiss index and its history a SQLite file, both in `home` (by default
  `mem0/` inside the run folder). Telemetry is off: MEM0_TELEMETRY is set to False before mem0 is imported.
- `infer=false` stores each item's index text as it is, tagged with the item's id, so searches return the
  stored items and evidence can be scored. `infer=true` lets mem0's LLM (`llm_base_url`, `llm_model`) extract, update and delete facts:
  searches return mem0's own memories (no evidence ids), and updating or deleting a source item, which mem0
  has rewritten, is refused rather than silently ignored.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from memos_lab.errors import ConfigError, MissingExtraError
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.base import SearchHit
from memos_lab.memory.textual.peers.base import PeerMemory, PeerSettings
from memos_lab.models.embedder import Embedder
from memos_lab.settings import non_negative, positive_int

ITEM_ID_KEY = "memos_id"  # mem0 metadata field holding the memos_lab item id (infer=false)
UNUSED_ENDPOINT = "http://127.0.0.1:9/v1"  # a closed port: a client mem0 builds but must never call
SCOPE = {"user_id": "memos_lab"}  # mem0 wants one of user/agent/run id; each memory has its own collection
# What mem0 keeps of a source item's metadata on the memories it extracts (infer=true): when, not where from.
CARRIED_METADATA = ("user", "session", "event_time")


@dataclass(frozen=True)
class Mem0Settings(PeerSettings):
    infer: bool = False  # true: mem0's LLM extraction (needs llm=openai_compatible)
    home: str | None = (
        None  # mem0's folder; null: mem0/ in the run folder (a temporary folder outside a run), removed with the memory
    )
    threshold: float = 0.1  # mem0's own minimum search score (its default)
    # infer=true: mem0's extraction model, any OpenAI-compatible server (often the run's llm= endpoint)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str | None = None  # the NAME of the variable holding the endpoint's key
    llm_max_tokens: int = 512  # per extraction call (mem0's own default, 2000, is minutes per turn on a CPU)

    def validate(self) -> None:
        super().validate()
        non_negative(self, "threshold")
        positive_int(self, "llm_max_tokens")
        if self.infer and not (self.llm_base_url and self.llm_model):
            raise ConfigError(
                "memory.infer=true runs mem0's LLM extraction on a served model: "
                "add memory.llm_base_url=URL memory.llm_model=NAME"
            )


class Mem0Memory(PeerMemory):
    system: ClassVar[str] = "mem0ai"
    settings_class: type[Mem0Settings] = Mem0Settings
    settings: Mem0Settings

    def __init__(self, embedder: Embedder, **settings: Any) -> None:
        super().__init__(embedder)
        self.settings = self.settings_class.from_mapping(settings)
        self.home, temporary = _home(self.settings)
        if temporary:  # outside a run nobody else will remove it: it goes with this memory
            weakref.finalize(self, shutil.rmtree, self.home, ignore_errors=True)
        self._mem0 = _open_mem0(self.home, self.settings, embedder)
        self._peer_ids: dict[str, list[str]] = {}  # item id -> the mem0 memories made from it
        self._counters: Counter[str] = Counter({"extracted_items": 0, "empty_extractions": 0, "extraction_failures": 0})

    @property
    def returns_stored_items(self) -> bool:
        return not self.settings.infer

    def system_info(self) -> dict[str, str]:
        return {
            "system": self.system,
            "version": metadata.version(self.system),
            "infer": str(self.settings.infer).lower(),
            "vector_store": "faiss",
            "threshold": str(self.settings.threshold),
        }

    def counters(self) -> dict[str, int]:
        return dict(self._counters) if self.settings.infer else {}

    def index_nbytes(self) -> int:
        index = getattr(self._mem0.vector_store, "index", None)  # mem0's faiss store keeps a flat index
        return 0 if index is None else int(index.ntotal) * int(index.d) * 4

    def _index_add(self, items: Sequence[MemoryItem]) -> None:
        from mem0.exceptions import LLMError

        embedding = self._mem0.embedding_model
        for item in items:
            extra = {name: getattr(item.metadata, name) for name in CARRIED_METADATA if getattr(item.metadata, name)}
            embedding.known[self.key(item)] = item.embedding  # mem0 embeds the text again: hand it the vector
            try:
                result = self._mem0.add(
                    self.key(item), **SCOPE, metadata={ITEM_ID_KEY: item.id, **extra}, infer=self.settings.infer
                )
            except LLMError:  # the extraction model failed (mem0 logged why): a counted failure, the run goes on
                self._counters["extraction_failures"] += 1
                continue
            finally:
                embedding.known.clear()
            added = [row["id"] for row in result.get("results", []) if row.get("event") == "ADD"]
            self._peer_ids[item.id] = added
            if self.settings.infer:  # nothing added: junk, or nothing worth keeping as mem0 judged it
                self._counters["extracted_items" if added else "empty_extractions"] += 1

    def _index_remove(self, item_ids: Sequence[str]) -> None:  # reached through delete(), refused with infer
        for item_id in item_ids:
            for peer_id in self._peer_ids.pop(item_id, []):
                self._mem0.delete(peer_id)

    def _refuse_when_rewritten(self, operation: str) -> None:
        if self.settings.infer:
            raise self.unsupported(operation, "with infer=true mem0 rewrote the source items into its own memories")

    def update(self, item_id: str, text: str, **metadata_changes: Any) -> MemoryItem:
        self._refuse_when_rewritten("updating a source item")
        return super().update(item_id, text, **metadata_changes)

    def merge(self, item_ids: Sequence[str], text: str | None = None, **metadata_changes: Any) -> MemoryItem:
        self._refuse_when_rewritten("merging source items")
        return super().merge(item_ids, text, **metadata_changes)

    def delete(self, item_id: str, hard: bool = False) -> None:
        self._refuse_when_rewritten("deleting a source item")
        super().delete(item_id, hard)

    def _peer_search(self, query: str, limit: int) -> list[SearchHit]:
        embedding = self._mem0.embedding_model
        embedding.known[query] = self._query_vector(query)  # mem0 embeds the query: hand it the vector
        try:
            found = self._mem0.search(query, top_k=limit, filters=dict(SCOPE), threshold=self.settings.threshold)
        finally:
            embedding.known.clear()
        hits = []
        for row in found.get("results", []):
            item = self._item_of(row)
            if item is not None:
                hits.append(SearchHit(item, float(row.get("score") or 0.0)))
        return hits

    def _item_of(self, row: dict[str, Any]) -> MemoryItem | None:
        meta = row.get("metadata") or {}
        if not self.settings.infer:
            return self._items.get(str(meta.get(ITEM_ID_KEY)))  # an id mem0 holds but we purged: skip it
        carried = {name: meta[name] for name in CARRIED_METADATA if isinstance(meta.get(name), str)}
        return MemoryItem(text=str(row.get("memory") or ""), id=f"mem0:{row['id']}", metadata=MemoryMetadata(**carried))


class _GivenEmbeddings:
    """mem0's embedding model, answering from memos_lab's embedder (vectors already computed are reused)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.known: dict[str, Any] = {}

    def embed(self, text: str, memory_action: str | None = None) -> list[float]:
        vector = self.known.get(text)
        if vector is None:
            vector = self.embedder.encode([text])[0]
        return [float(value) for value in vector]

    def embed_batch(self, texts: Sequence[str], memory_action: str | None = None) -> list[list[float]]:
        return [[float(value) for value in vector] for vector in self.embedder.encode(list(texts))]


def _open_mem0(home: Path, settings: Mem0Settings, embedder: Embedder) -> Any:
    home.mkdir(parents=True, exist_ok=True)
    # Read by mem0 at import time: its folder and telemetry switch must be set before the first import.
    os.environ["MEM0_TELEMETRY"] = "False"
    os.environ.setdefault("MEM0_DIR", str(home))
    # mem0 logs every insert at INFO and warns per instance about features we do not use (hybrid search, spaCy)
    logging.getLogger("mem0").setLevel(logging.ERROR)
    try:
        import mem0.memory.main
        import mem0.memory.telemetry
        from mem0 import Memory
    except ImportError:
        raise MissingExtraError('memory=mem0 needs mem0: pip install -e ".[peers]"') from None
    # The switch is read once, at mem0's first import, which may have come before us: turn it off where it is read.
    mem0.memory.telemetry.MEM0_TELEMETRY = False
    mem0.memory.main.MEM0_TELEMETRY = False  # imported by name there

    collection = f"memos_{uuid.uuid4().hex[:12]}"  # one faiss index per memory (per cube)
    unused: dict[str, Any] = {"api_key": "unused", "openai_base_url": UNUSED_ENDPOINT}
    llm: dict[str, Any] = unused | {"model": "unused"}
    if settings.infer:
        key = os.environ.get(settings.llm_api_key_env, "") if settings.llm_api_key_env else ""
        llm = {
            "api_key": key or "unused",
            "openai_base_url": settings.llm_base_url,
            "model": settings.llm_model,
            "max_tokens": settings.llm_max_tokens,
        }
    memory = Memory.from_config(
        {
            "vector_store": {
                "provider": "faiss",
                "config": {
                    "collection_name": collection,
                    "path": str(home / collection),
                    "embedding_model_dims": embedder.dim,
                },
            },
            "embedder": {"provider": "openai", "config": unused | {"embedding_dims": embedder.dim}},
            "llm": {"provider": "openai", "config": llm},
            "history_db_path": str(home / f"{collection}-history.db"),
        }
    )
    memory.embedding_model = _GivenEmbeddings(embedder)
    return memory


def _home(settings: Mem0Settings) -> tuple[Path, bool]:
    """mem0's folder and whether it is a temporary one (no `home` given, not inside a run)."""
    from hydra.core.hydra_config import HydraConfig

    if settings.home:
        return Path(settings.home), False
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "mem0", False
    return Path(tempfile.mkdtemp(prefix="memos_lab-mem0-")), True
