"""Knowledge-update datasets from local files, all yielding `KnowledgeEdit`s:

- `load_facts`: our own record schema, one JSON object per line (what `asdict(KnowledgeEdit)` gives);
- `load_zsre`: MEND's zsRE eval format (`subject, src, pred, rephrase, alt, answers, loc, loc_ans`);
- `load_counterfact`: ROME's CounterFact format (`requested_rewrite`, `paraphrase_prompts`, `neighborhood_prompts`).

Files are read through the `datasets` library (JSON or JSON lines); a missing key is a DataError naming the
record and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memos_lab.data.schema import KnowledgeEdit, LocalityProbe
from memos_lab.errors import DataError
from memos_lab.settings import Settings, positive_int, uses_settings


def _rows(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path: no file at {str(path)!r}")
    import datasets

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset("json", data_files=str(file), split="train", keep_in_memory=True)
    except Exception as error:  # datasets wraps parser errors in several exception types
        raise DataError(f"dataset.path: cannot read {str(path)!r} as JSON or JSON lines: {error}") from error
    rows = table.to_list()
    if not rows:
        raise DataError(f"dataset.path: {str(path)!r} holds no records")
    return rows


def _get(record: Mapping[str, Any], key: str, where: str) -> Any:
    """record[key] for a dotted key; `datasets` fills keys missing from some rows with None."""
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            raise DataError(f"{where}: missing key {key!r}")
    return value


def _list(record: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _get(record, key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: key {key!r} must be a list, got {type(value).__name__}")
    return value


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(record, key, where)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def edit_to_record(edit: KnowledgeEdit) -> dict[str, Any]:
    return dataclasses.asdict(edit)


def edit_from_record(record: Mapping[str, Any], where: str) -> KnowledgeEdit:
    """A KnowledgeEdit from our own JSON schema; only edit_id, subject, prompt and target_new are required."""
    probes = {}
    for key in ("locality", "portability"):
        items = record.get(key) or []
        try:
            probes[key] = tuple(LocalityProbe(prompt=str(p["prompt"]), answer=p.get("answer")) for p in items)
        except (KeyError, TypeError, AttributeError):
            raise DataError(f"{where}: {key} must be a list of {{prompt, answer}} objects") from None
    return KnowledgeEdit(
        edit_id=_text(record, "edit_id", where),
        subject=_text(record, "subject", where),
        relation=str(record.get("relation") or ""),
        prompt=_text(record, "prompt", where),
        target_new=_text(record, "target_new", where),
        target_old=record.get("target_old"),
        paraphrases=tuple(record.get("paraphrases") or ()),
        locality=probes["locality"],
        portability=probes["portability"],
        metadata={str(k): str(v) for k, v in (record.get("metadata") or {}).items() if v is not None},
    )


@dataclass(frozen=True)
class FactsFileSettings(Settings):
    section: ClassVar[str] = "dataset"
    path: str = "???"  # a local file; nothing is downloaded


@dataclass(frozen=True)
class EditBenchmarkSettings(FactsFileSettings):
    limit: int | None = None  # the first N records only

    def validate(self) -> None:
        positive_int(self, "limit")


@uses_settings(FactsFileSettings)
def load_facts(path: str) -> list[KnowledgeEdit]:
    return [edit_from_record(row, f"{path} record {i}") for i, row in enumerate(_rows(path))]


@uses_settings(EditBenchmarkSettings)
def load_zsre(path: str, limit: int | None = None) -> list[KnowledgeEdit]:
    edits = []
    for i, row in enumerate(_rows(path)[:limit]):
        where = f"zsRE record {i}"
        answers = _get(row, "answers", where)
        edits.append(
            KnowledgeEdit(
                edit_id=f"zsre-{i}",
                subject=_text(row, "subject", where),
                relation="zsre",
                prompt=_text(row, "src", where),
                target_new=_text(row, "alt", where),
                target_old=_first_answer(answers),
                paraphrases=(_text(row, "rephrase", where),),
                locality=(LocalityProbe(_text(row, "loc", where), _text(row, "loc_ans", where)),),
                metadata={"source": "zsre", "pred": str(row.get("pred") or "")},
            )
        )
    return edits


def _first_answer(answers: Any) -> str | None:
    """The true answer of a zsRE record: real files hold a list of strings, but also a bare string or a
    list with empty or nested entries; nothing usable gives None (the probability metrics skip the edit)."""
    while isinstance(answers, list):
        answers = next((a for a in answers if a and (not isinstance(a, str) or a.strip())), None)
    return answers.strip() if isinstance(answers, str) and answers.strip() else None


@uses_settings(EditBenchmarkSettings)
def load_counterfact(path: str, limit: int | None = None) -> list[KnowledgeEdit]:
    edits = []
    for i, row in enumerate(_rows(path)[:limit]):
        where = f"CounterFact record {row.get('case_id', i)}"
        subject = _text(row, "requested_rewrite.subject", where)
        template = _text(row, "requested_rewrite.prompt", where)
        if "{}" not in template:
            raise DataError(f"{where}: requested_rewrite.prompt {template!r} has no {{}} for the subject")
        target_true = _text(row, "requested_rewrite.target_true.str", where)
        edits.append(
            KnowledgeEdit(
                edit_id=f"counterfact-{row.get('case_id', i)}",
                subject=subject,
                relation=str(_get(row, "requested_rewrite", where).get("relation_id") or ""),
                prompt=template.replace("{}", subject),
                target_new=_text(row, "requested_rewrite.target_new.str", where),
                target_old=target_true,
                paraphrases=tuple(str(p) for p in _list(row, "paraphrase_prompts", where)),
                # neighbours share the relation and the old object: they should keep answering target_true
                locality=tuple(LocalityProbe(str(p), target_true) for p in _list(row, "neighborhood_prompts", where)),
                metadata={"source": "counterfact"},
            )
        )
    return edits
