"""LongMemEval (Wu et al. 2025) from a local file (`longmemeval_s.json` format).

Each record is one question over its own haystack: `haystack_sessions` (lists of `{role, content,
has_answer}` turns) with `haystack_session_ids` and `haystack_dates`, plus `question_id`,
`question_type`, `question`, `answer`, `question_date` and `answer_session_ids`. Evidence is the
turns marked `has_answer`, or every turn of the answer sessions when none is marked. Question ids
ending in `_abs` are abstention (unanswerable) questions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from memos_lab.data.local_json import read_json_records, require, require_list
from memos_lab.data.schema import (
    KNOWLEDGE_UPDATE,
    MULTI_HOP,
    SINGLE_HOP,
    TEMPORAL,
    UNANSWERABLE,
    Conversation,
    Question,
    Session,
    Turn,
)  # fmt: skip
from memos_lab.errors import DataError
from memos_lab.settings import Settings, positive_int, uses_settings

QUESTION_TYPES = {
    "single-session-user": SINGLE_HOP,
    "single-session-assistant": SINGLE_HOP,
    "single-session-preference": SINGLE_HOP,
    "multi-session": MULTI_HOP,
    "temporal-reasoning": TEMPORAL,
    "knowledge-update": KNOWLEDGE_UPDATE,
}


@dataclass(frozen=True)
class LongMemEvalSettings(Settings):
    section: ClassVar[str] = "dataset"
    path: str = "???"  # longmemeval_s.json (or _m, _oracle), read locally
    limit: int | None = None  # the first N questions (each with its own haystack) only
    cache_dir: str | None = None  # the `datasets` cache of the parsed file

    def validate(self) -> None:
        positive_int(self, "limit")


@uses_settings(LongMemEvalSettings)
def load_longmemeval(path: str, limit: int | None = None, cache_dir: str | None = None) -> Iterator[Conversation]:
    for index, record in enumerate(read_json_records(path, "LongMemEval", cache_dir)[:limit]):
        yield _conversation(record, index)


def _conversation(record: dict[str, Any], index: int) -> Conversation:
    where = f"LongMemEval record {index}"
    question_id = str(require(record, "question_id", where))
    where = f"{where} ({question_id})"
    sessions_in = require_list(record, "haystack_sessions", where, list)
    session_ids = [str(s) for s in require_list(record, "haystack_session_ids", where)]
    dates = [_iso_time(d, f"{where} haystack_dates") for d in require_list(record, "haystack_dates", where)]
    if not len(sessions_in) == len(session_ids) == len(dates):
        raise DataError(f"{where}: haystack_sessions, haystack_session_ids and haystack_dates differ in length")
    sessions, marked = [], []
    for session_id, date, turns_in in zip(session_ids, dates, sessions_in, strict=False):
        turns = []
        for j, turn in enumerate(turns_in):
            turn_where = f"{where} session {session_id} turn {j}"
            turns.append(Turn(f"{session_id}:{j}", str(require(turn, "role", turn_where)),
                              str(require(turn, "content", turn_where)), session_id, date))  # fmt: skip
            if turn.get("has_answer"):  # `require` above made sure the turn is an object
                marked.append(turns[-1].turn_id)
        sessions.append(Session(session_id, date, tuple(turns)))
    answer_sessions = {str(s) for s in require_list(record, "answer_session_ids", where)}
    evidence = marked or [t.turn_id for s in sessions if s.session_id in answer_sessions for t in s.turns]
    question_type = str(require(record, "question_type", where))
    if question_type not in QUESTION_TYPES:
        raise DataError(f"{where}: unknown question_type {question_type!r}; valid: {sorted(QUESTION_TYPES)}")
    category = UNANSWERABLE if question_id.endswith("_abs") else QUESTION_TYPES[question_type]
    question = Question(
        question_id=question_id,
        question=str(require(record, "question", where)),
        answer=str(require(record, "answer", where)),
        evidence=() if category == UNANSWERABLE else tuple(evidence),
        category=category,
        time=_iso_time(require(record, "question_date", where), f"{where} question_date"),
    )
    return Conversation(question_id, ("user", "assistant"), tuple(sessions), (question,))


def _iso_time(text: Any, where: str) -> str:
    """LongMemEval dates look like "2023/05/20 (Sat) 02:21"."""
    raw = str(text).strip()
    try:
        day, _, clock = raw.partition(" (")
        return datetime.strptime(f"{day} {clock.partition(') ')[2]}", "%Y/%m/%d %H:%M").isoformat(timespec="minutes")
    except ValueError:
        raise DataError(f"{where}: unreadable date {raw!r} (expected like '2023/05/20 (Sat) 02:21')") from None
