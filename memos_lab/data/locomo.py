"""LoCoMo (Maharana et al. 2024), `locomo10.json` format, from a local file.

A list of conversations: `conversation` holds `speaker_a`, `speaker_b`, `session_N` turn lists
`{speaker, dia_id, text[, blip_caption]}` and `session_N_date_time` ("1:56 pm on 8 May, 2023");
`qa` holds `{question, answer, evidence: [dia_id, ...], category}` (category 5, adversarial, has
`adversarial_answer` instead of `answer`; an evidence string may hold several ids separated by ';').
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from memos_lab.data.local_json import read_json_records, require, require_list
from memos_lab.data.schema import (
    ADVERSARIAL,
    MULTI_HOP,
    OPEN_DOMAIN,
    SINGLE_HOP,
    TEMPORAL,
    Conversation,
    Question,
    Session,
    Turn,
)  # fmt: skip
from memos_lab.errors import ConfigError, DataError
from memos_lab.settings import Settings, positive_int, uses_settings

CATEGORIES = {1: MULTI_HOP, 2: TEMPORAL, 3: OPEN_DOMAIN, 4: SINGLE_HOP, 5: ADVERSARIAL}
_SESSION_KEY = re.compile(r"session_(\d+)")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M %p on %B %d, %Y")


@dataclass(frozen=True)
class LocomoSettings(Settings):
    section: ClassVar[str] = "dataset"
    path: str = "???"  # locomo10.json, read locally
    include_captions: bool = True  # append a shared image's caption to its turn
    limit: int | None = None  # the first N conversations only
    cache_dir: str | None = None  # the `datasets` cache of the parsed file
    category_map: dict[int, str] | None = None  # the dataset's category ids -> names (None: LoCoMo's own)

    def validate(self) -> None:
        positive_int(self, "limit")


@uses_settings(LocomoSettings)
def load_locomo(
    path: str,
    include_captions: bool = True,
    limit: int | None = None,
    cache_dir: str | None = None,
    category_map: Mapping[int, str] | None = None,
) -> Iterator[Conversation]:
    """`include_captions` appends an image's caption to the turn that shares it, as LoCoMo baselines do.
    `category_map` names the dataset's category ids (default: the dataset's own code, `CATEGORIES`)."""
    categories = checked_category_map(category_map)
    records = read_json_records(path, "LoCoMo", cache_dir)
    for index, record in enumerate(records[:limit]):
        yield _conversation(record, index, include_captions, categories)


def checked_category_map(category_map: Mapping[int, str] | None) -> dict[int, str]:
    if category_map is None:
        return dict(CATEGORIES)
    known = {MULTI_HOP, TEMPORAL, OPEN_DOMAIN, SINGLE_HOP, ADVERSARIAL}
    mapped = {}
    for key, name in dict(category_map).items():
        if str(name) not in known or not str(key).lstrip("-").isdigit():
            raise ConfigError(
                f"dataset.category_map: {key}: {name!r} is not an integer id mapped to one of {sorted(known)}"
            )
        mapped[int(key)] = str(name)
    return mapped


def _conversation(
    record: dict[str, Any], index: int, include_captions: bool, categories: dict[int, str]
) -> Conversation:
    conversation_id = str(record.get("sample_id") or f"locomo-{index}")
    where = f"LoCoMo record {index} ({conversation_id})"
    body = require(record, "conversation", where)
    if not isinstance(body, dict):
        raise DataError(f"{where}: conversation must be an object, got {type(body).__name__}")
    speakers = (
        str(require(body, "speaker_a", f"{where} conversation")),
        str(require(body, "speaker_b", f"{where} conversation")),
    )
    numbers = sorted(
        int(m.group(1)) for key, value in body.items() if value is not None and (m := _SESSION_KEY.fullmatch(key))
    )
    if not numbers:
        raise DataError(f"{where}: conversation has no session_N turn lists")
    sessions = []
    for number in numbers:
        session_where = f"{where} session_{number}"
        time = _iso_time(require(body, f"session_{number}_date_time", f"{where} conversation"), session_where)
        turns = tuple(_turn(turn, f"session_{number}", time, include_captions, f"{session_where} turn {i}")
                      for i, turn in enumerate(require_list(body, f"session_{number}", f"{where} conversation")))  # fmt: skip
        sessions.append(Session(f"session_{number}", time, turns))
    last_time = sessions[-1].time
    questions = tuple(_question(qa, f"{conversation_id}/q{i}", last_time, f"{where} qa {i}", categories)
                      for i, qa in enumerate(require_list(record, "qa", where)))  # fmt: skip
    return Conversation(conversation_id, speakers, tuple(sessions), questions)


def _turn(turn: Any, session_id: str, time: str, include_captions: bool, where: str) -> Turn:
    text = str(require(turn, "text", where))
    caption = turn.get("blip_caption") if include_captions else None
    if caption:
        text = f"{text} [shares a photo of {caption}]"
    return Turn(str(require(turn, "dia_id", where)), str(require(turn, "speaker", where)), text, session_id, time)


def _question(qa: Any, question_id: str, time: str, where: str, categories: dict[int, str]) -> Question:
    category_id = require(qa, "category", where)
    if isinstance(category_id, bool) or not isinstance(category_id, int) or category_id not in categories:
        raise DataError(f"{where}: unknown category {category_id!r}; valid: {sorted(categories)}")
    adversarial = categories[category_id] == ADVERSARIAL
    answer_key = "adversarial_answer" if adversarial and qa.get("answer") is None else "answer"
    evidence = tuple(
        part.strip() for entry in require_list(qa, "evidence", where) for part in str(entry).split(";") if part.strip()
    )
    return Question(
        question_id=question_id,
        question=str(require(qa, "question", where)),
        answer=str(qa.get(answer_key) if adversarial else require(qa, "answer", where)),
        evidence=evidence,
        category=categories[category_id],
        category_id=int(category_id),
        time=time,
    )


def _iso_time(text: str, where: str) -> str:
    for date_format in _DATE_FORMATS:
        try:
            return datetime.strptime(str(text).strip(), date_format).isoformat(timespec="minutes")
        except ValueError:
            continue
    raise DataError(f"{where}: unreadable date {text!r} (expected like '1:56 pm on 8 May, 2023')")
