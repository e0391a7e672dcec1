"""Public datasets read from a local JSON file through the `datasets` library (never from a hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memos_lab.errors import DataError


def refuse_non_records(file: Path, dataset: str) -> None:
    """DataError unless the file starts like records (a JSON array, or JSON lines of objects): a file that is
    just `null` crashes the `datasets` JSON reader (pyarrow) with a segmentation fault, not an exception."""
    with file.open("rb") as handle:
        start = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not start.startswith((b"[", b"{")):
        raise DataError(f"dataset.path: {file} is not a {dataset} file: a JSON array or JSON lines of objects expected")


def read_json_records(path: str | Path, dataset: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """The records of a JSON (list of objects) or JSONL file, as plain dicts."""
    import datasets

    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset.path: no {dataset} file at {file}")
    refuse_non_records(file, dataset)
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset("json", data_files=str(file), split="train", cache_dir=cache_dir)
    except Exception as error:  # datasets raises many types (Arrow, JSON, its own) for a malformed file
        raise DataError(
            f"dataset.path: {file} is not a readable {dataset} JSON file ({type(error).__name__}: {error})"
        ) from None
    return [dict(record) for record in table]


def require(record: Any, key: str, where: str) -> Any:
    """record[key], or a DataError naming the key and the record."""
    if not isinstance(record, dict) or record.get(key) is None:
        raise DataError(f"{where}: missing key {key!r}")
    return record[key]


def require_list(record: Any, key: str, where: str, item: type | None = None) -> list[Any]:
    """record[key] as a list (of `item`s if given), or a DataError naming the key and the record."""
    value = require(record, key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    if item is not None and not all(isinstance(v, item) for v in value):
        raise DataError(f"{where}: {key!r} must be a list of {item.__name__}")
    return value
