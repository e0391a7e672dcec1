"""Records every dataset loader yields, whatever the source format.

Dialogue datasets yield `Conversation`s; knowledge-update datasets yield `KnowledgeEdit`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Question categories. LoCoMo ids map onto these names (1 multi-hop, 2 temporal, 3 open-domain,
# 4 single-hop, 5 adversarial); loaders keep the source id in `Question.category_id`.
SINGLE_HOP = "single-hop"
MULTI_HOP = "multi-hop"
TEMPORAL = "temporal"
OPEN_DOMAIN = "open-domain"
KNOWLEDGE_UPDATE = "knowledge-update"
UNANSWERABLE = "unanswerable"
ADVERSARIAL = "adversarial"
# Categories whose gold answer is "not in the memory": excluded from recall, credited for declining.
NO_EVIDENCE_CATEGORIES = frozenset({UNANSWERABLE, ADVERSARIAL})


@dataclass(frozen=True)
class Turn:
    """One utterance. `turn_id` is unique within its conversation (LoCoMo's `dia_id`, e.g. `D3:12`)."""

    turn_id: str
    speaker: str
    text: str
    session_id: str
    time: str  # ISO-8601 timestamp of the session the turn belongs to


@dataclass(frozen=True)
class Session:
    session_id: str
    time: str  # ISO-8601
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Question:
    question_id: str
    question: str
    answer: str
    evidence: tuple[str, ...]  # turn ids that hold the answer; empty for unanswerable questions
    category: str
    category_id: int | None = None  # the source dataset's own category id, where it has one
    time: str | None = None  # when the question is asked (after its evidence was seen)

    @property
    def answerable(self) -> bool:
        return self.category not in NO_EVIDENCE_CATEGORIES


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    speakers: tuple[str, ...]
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]

    @property
    def turns(self) -> list[Turn]:
        return [turn for session in self.sessions for turn in session.turns]


@dataclass(frozen=True)
class LocalityProbe:
    """An unrelated prompt whose answer an edit must leave alone."""

    prompt: str
    answer: str | None = None  # the source's expected answer, where it has one


@dataclass(frozen=True)
class KnowledgeEdit:
    """One knowledge update: `prompt` should now continue with `target_new` instead of `target_old`."""

    edit_id: str
    subject: str
    relation: str
    prompt: str
    target_new: str
    target_old: str | None = None
    paraphrases: tuple[str, ...] = ()
    locality: tuple[LocalityProbe, ...] = ()
    portability: tuple[LocalityProbe, ...] = ()  # questions that need the new fact to reason one step further
    metadata: dict[str, str] = field(default_factory=dict)
