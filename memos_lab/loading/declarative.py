"""Load dialogue datasets or JSONL records into a cube's declarative memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.artifact import parse_json
from memos_lab.data.schema import Conversation
from memos_lab.errors import ConfigError, DataError
from memos_lab.loading.common import LoaderSettings, cube_writer, open_cube, positive_int, required, save_cube
from memos_lab.memory.item import STATUSES, MemoryItem, MemoryMetadata
from memos_lab.settings import uses_settings

JSONL_FIELDS = {"text", "user", "session", "time", "tags", "source"}  # other keys go to metadata.extra


@uses_settings(LoaderSettings)
@cube_writer
def load(cfg: DictConfig) -> dict[str, Any]:
    user = required(cfg, "user")
    has_dataset, has_input = cfg.get("dataset") is not None, cfg.get("input") is not None
    if has_dataset == has_input:
        raise ConfigError("load needs exactly one source: dataset=NAME or input=FILE.jsonl")
    batch_size = positive_int(cfg.batch_size, "batch_size")
    embedder = hydra.utils.instantiate(cfg.embedder)
    cube, created = open_cube(cfg, embedder)  # an existing cube keeps its own backend

    started = time.perf_counter()
    if has_dataset:
        reader = hydra.utils.instantiate(cfg.reader)
        items, records = _dataset_items(cfg, reader, user)
        source, reader_name = cfg.dataset._target_, reader.name
    else:
        items = list(jsonl_items(Path(cfg.input), user))
        records, source, reader_name = len(items), str(cfg.input), "jsonl"
    # Provenance makes loading idempotent: running the same load twice stores nothing new.
    known = {item.metadata.source for item in cube.text.get_all({"statuses": STATUSES}) if item.metadata.source}
    new = [item for item in items if item.metadata.source not in known]
    storing_started = time.perf_counter()
    with tqdm(total=len(new), desc=f"storing into {cfg.cube_dir}", unit="item") as progress:
        for start in range(0, len(new), batch_size):
            cube.text.add(new[start : start + batch_size])
            progress.update(min(batch_size, len(new) - start))
    storing_s = time.perf_counter() - storing_started
    return {
        **save_cube(cfg, cube, created),
        "memory": type(cube.text).__name__,
        "source": source,
        "reader": reader_name,
        "records": records,
        "items_read": len(items),
        "items_added": len(new),
        "items_already_stored": len(items) - len(new),
        "items_total": len(cube.text),
        "seconds": time.perf_counter() - started,
        "stored_items_per_s": len(new) / storing_s if storing_s else 0.0,  # embedding + indexing
    }


def _dataset_items(cfg: DictConfig, reader: Any, user: str) -> tuple[list[MemoryItem], int]:
    records = list(hydra.utils.instantiate(cfg.dataset))
    if not records:
        raise DataError("the dataset is empty")
    wrong = sorted({type(record).__name__ for record in records if not isinstance(record, Conversation)})
    if wrong:
        raise ConfigError(f"declarative loading reads dialogue datasets; the chosen dataset yields {wrong}")
    items = []
    for conversation in tqdm(records, desc=f"reading ({reader.name})", unit="conv"):
        items.extend(reader.read(conversation, user))
    return items, len(records)


def jsonl_items(path: Path, user: str) -> Iterator[MemoryItem]:
    """One item per line of `{"text": ..., "user", "session", "time", "tags": [...], "source", ...}`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"input {path}: cannot read ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = parse_json(line.encode("utf-8"), where)  # strict: depth, lone surrogates, NaN
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{where}: a record needs a string field 'text'")
        tags = record.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise DataError(f"{where}: 'tags' must be a list of strings")
        yield MemoryItem(
            text=record["text"],
            metadata=MemoryMetadata(
                user=str(record.get("user", user)),
                session=_optional_str(record, "session"),
                source=str(record.get("source", f"{path.name}:{number}")),
                event_time=_optional_str(record, "time"),
                tags=tuple(tags),
                extra={key: str(value) for key, value in record.items() if key not in JSONL_FIELDS},
            ),
        )


def _optional_str(record: dict[str, Any], key: str) -> str | None:
    return None if record.get(key) is None else str(record[key])
