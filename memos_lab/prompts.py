"""Versioned prompt templates (conf/prompt/*.yaml): the answer prompt and the judge prompt of the QA protocol.

A template is checked when it is built, before any model loads: every placeholder its role needs must
appear in the part that carries it, and no unknown placeholder may appear (it would fail mid-run).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar

from memos_lab.errors import ConfigError


def placeholders(template: str) -> set[str]:
    """The {names} a str.format template fills."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:  # an unmatched brace
        raise ConfigError(f"malformed prompt template ({error}): {template[:60]!r}") from None


def _check(kind: str, version: str, parts: dict[str, str], needed: dict[str, set[str]]) -> None:
    if not isinstance(version, str) or not version:
        raise ConfigError(f"prompt.{kind}: the prompt file has no version")
    for part, names in needed.items():
        text = parts[part]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"prompt.{kind} ({version}): empty or missing `{part}`")
        found = placeholders(text)
        missing = sorted(names - found)
        if missing:
            raise ConfigError(
                f"prompt.{kind} ({version}): `{part}` lacks the placeholder {{{missing[0]}}}; "
                f"it must hold {', '.join('{' + name + '}' for name in sorted(names))}"
            )
        unknown = sorted(found - names)
        if unknown:
            raise ConfigError(
                f"prompt.{kind} ({version}): `{part}` has the unknown placeholder {{{unknown[0]}}}; "
                f"valid: {', '.join('{' + name + '}' for name in sorted(names))}"
            )


@dataclass(frozen=True)
class AnswerPrompt:
    """System message with the memories (the part a KV cache can hold), user message with the question."""

    version: str
    system: str
    user: str
    empty_memories: str = "(none)"
    NEEDED: ClassVar[dict[str, set[str]]] = {"system": {"memories"}, "user": {"question"}}

    def __post_init__(self) -> None:
        _check("answer", self.version, {"system": self.system, "user": self.user}, self.NEEDED)

    def memory_block(self, lines: list[str]) -> list[str]:
        return lines or [self.empty_memories]

    def messages(self, lines: list[str], question: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system.format(memories="\n".join(self.memory_block(lines)))},
            {"role": "user", "content": self.user.format(question=question)},
        ]


@dataclass(frozen=True)
class JudgePrompt:
    version: str
    user: str
    unanswerable_gold: str
    NEEDED: ClassVar[dict[str, set[str]]] = {"user": {"question", "gold", "prediction"}}

    def __post_init__(self) -> None:
        _check("judge", self.version, {"user": self.user}, self.NEEDED)
        if not isinstance(self.unanswerable_gold, str) or not self.unanswerable_gold.strip():
            raise ConfigError(f"prompt.judge ({self.version}): empty or missing `unanswerable_gold`")

    def render(self, question: str, gold: str, prediction: str) -> str:
        return self.user.format(question=question, gold=gold, prediction=prediction)
