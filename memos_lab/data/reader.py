"""Turns raw dialogue into memory items."""

from __future__ import annotations

from memos_lab.data.schema import Conversation, Turn
from memos_lab.memory.item import MemoryItem, MemoryMetadata


def turn_item(conversation: Conversation, turn: Turn, user: str) -> MemoryItem:
    """`fast` reading: one item per turn, keeping speaker, date and provenance."""
    return MemoryItem(
        text=f"{turn.speaker}: {turn.text}",
        metadata=MemoryMetadata(
            user=user,
            session=turn.session_id,
            source=f"{conversation.conversation_id}/{turn.turn_id}",
            event_time=turn.time,
            tags=(f"speaker:{turn.speaker}",),
            extra={"turn_id": turn.turn_id, "conversation_id": conversation.conversation_id},
        ),
    )


def conversation_items(conversation: Conversation, user: str) -> list[MemoryItem]:
    return [turn_item(conversation, turn, user) for turn in conversation.turns]
