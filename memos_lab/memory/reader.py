"""Readers turn raw dialogue into memory items: `fast` (one item per turn) or `fine` (facts from the answering model)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from memos_lab.data.schema import Conversation, Turn
from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest, Generator
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.memory.textual.base import KEY_FIELD, MAX_TEXT_CHARS
from memos_lab.settings import Settings, non_negative_int, positive_int

log = logging.getLogger(__name__)

FACT_PROMPT = (
    "List the facts stated in this conversation as short, self-contained sentences, one per line, "
    "naming people instead of using pronouns.\n\n{dialogue}"
)


def turn_item(conversation: Conversation, turn: Turn, user: str, key: str | None = None) -> MemoryItem:
    """`fast` reading: one item per turn, keeping speaker, date and provenance (and an index key, if given)."""
    extra = {"turn_id": turn.turn_id, "conversation_id": conversation.conversation_id}
    if key is not None:
        extra[KEY_FIELD] = key
    return MemoryItem(
        text=f"{turn.speaker}: {turn.text}",
        metadata=MemoryMetadata(
            user=user,
            session=turn.session_id,
            source=f"{conversation.conversation_id}/{turn.turn_id}",
            event_time=turn.time,
            tags=(f"speaker:{turn.speaker}",),
            extra=extra,
        ),
    )


def conversation_items(conversation: Conversation, user: str) -> list[MemoryItem]:
    return [turn_item(conversation, turn, user) for turn in conversation.turns]


class Reader(ABC):
    name: str

    @abstractmethod
    def read(self, conversation: Conversation, user: str) -> list[MemoryItem]:
        """Memory items for one conversation, each with its provenance in `metadata.source`."""


@dataclass(frozen=True)
class FastReaderSettings(Settings):
    section: ClassVar[str] = "reader"
    context_turns: int = 1  # index each turn with this many turns before and after it (same session)
    date_in_key: bool = False  # prefix the index key with the session date in words

    def validate(self) -> None:
        non_negative_int(self, "context_turns")


class FastReader(Reader):
    """One item per turn. Its index key can carry context the turn alone lacks: `context_turns` turns
    before and after it in its session (answers often need the question they reply to), and with
    `date_in_key` the session date in words (so "in May 2023" can match)."""

    settings_class = FastReaderSettings

    name = "fast"

    def __init__(self, context_turns: int = 1, date_in_key: bool = False) -> None:
        if isinstance(context_turns, bool) or not isinstance(context_turns, int) or context_turns < 0:
            raise ConfigError(f"reader.context_turns must be a non-negative integer, got {context_turns!r}")
        self.context_turns = context_turns
        self.date_in_key = date_in_key

    def read(self, conversation: Conversation, user: str) -> list[MemoryItem]:
        if not self.context_turns and not self.date_in_key:
            return conversation_items(conversation, user)
        items = []
        for session in conversation.sessions:
            turns = session.turns
            for i, turn in enumerate(turns):
                window = turns[max(0, i - self.context_turns) : i + self.context_turns + 1]
                key = "\n".join(f"{t.speaker}: {t.text}" for t in window)
                if self.date_in_key:
                    key = f"[{spoken_date(session.time)}]\n{key}"
                items.append(turn_item(conversation, turn, user, key=key[:MAX_TEXT_CHARS]))
        return items


@dataclass(frozen=True)
class FineReaderSettings(Settings):
    section: ClassVar[str] = "reader"
    config_keys: ClassVar[dict[str, Any]] = {"generator": None}  # the answering model, built from `llm=`
    window: int = 8  # turns shown to the model per call
    max_new_tokens: int = 128
    max_facts: int = 8  # facts kept per window

    def validate(self) -> None:
        positive_int(self, "window", "max_new_tokens", "max_facts")


class FineReader(Reader):
    """Asks the answering model (`llm=`, local or served) for the facts in each window of `window` turns.

    Every fact keeps the ids of the turns it was read from (`extra["source_turns"]`, `;`-separated), so
    retrieval can still be scored against turn-level evidence. A window the model fails on gives no facts
    and is counted in `failures`.
    """

    settings_class = FineReaderSettings

    name = "fine"

    def __init__(self, generator: Generator, window: int = 8, max_new_tokens: int = 128, max_facts: int = 8) -> None:
        for key, value in {"window": window, "max_new_tokens": max_new_tokens, "max_facts": max_facts}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"reader.{key} must be a positive integer, got {value!r}")
        self.generator = generator
        self.window = window
        self.max_new_tokens = max_new_tokens
        self.max_facts = max_facts
        self.failures = 0

    def read(self, conversation: Conversation, user: str) -> list[MemoryItem]:
        windows = [
            (session, session.turns[start : start + self.window])
            for session in conversation.sessions
            for start in range(0, len(session.turns), self.window)
        ]
        requests = [
            ChatRequest.user(FACT_PROMPT.format(dialogue="\n".join(f"{t.speaker}: {t.text}" for t in turns)))
            for _, turns in windows
        ]
        items: list[MemoryItem] = []
        for (session, turns), generation in zip(
            windows, self.generator.generate(requests, self.max_new_tokens), strict=True
        ):
            if generation.failed:
                self.failures += 1
                log.warning(
                    "fine reader: no facts for %s/%s: %s",
                    conversation.conversation_id,
                    turns[0].turn_id,
                    generation.error,
                )
                continue
            turn_ids = [turn.turn_id for turn in turns]
            for fact in _facts(generation.text, self.max_facts):
                items.append(
                    MemoryItem(
                        text=fact,
                        metadata=MemoryMetadata(
                            user=user,
                            session=session.session_id,
                            source=f"{conversation.conversation_id}/{turn_ids[0]}..{turn_ids[-1]}#{len(items)}",
                            event_time=session.time,
                            tags=("reader:fine",),
                            extra={"source_turns": ";".join(turn_ids), "conversation_id": conversation.conversation_id},
                        ),
                    )
                )
        return items


def _facts(text: str, limit: int) -> list[str]:
    facts = [line.strip(" -*•\t").strip() for line in text.splitlines()]
    return [fact[:MAX_TEXT_CHARS] for fact in facts if fact][:limit]


def spoken_date(iso_time: str) -> str:
    """ "2023-05-08T13:56" -> "8 May 2023"; anything unparseable is kept as it is."""
    try:
        moment = datetime.fromisoformat(iso_time)
    except ValueError:
        return iso_time
    return f"{moment.day} {moment:%B %Y}"
