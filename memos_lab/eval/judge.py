"""Optional LLM judge: any `Generator` (usually a served model, `judge=openai_compatible`) grades answers.

A question the judge gives no verdict for (the server failed, timed out, or answered neither CORRECT nor
WRONG) is a `JudgeError` for that question, or a None in `judge_many`; the experiment counts it as a
failure and goes on. The generator takes a server that keeps failing for dead, so it costs a few timeouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from memos_lab.errors import MemosError
from memos_lab.generation.base import ChatRequest, Generator
from memos_lab.settings import Settings, positive_int

PROMPT = (
    "You grade answers to questions about a conversation. Compare the generated answer with the gold answer: "
    "it is CORRECT if it states the same fact (wording, extra detail and date formats may differ), WRONG otherwise.\n"
    "Question: {question}\nGold answer: {gold}\nGenerated answer: {prediction}\n"
    "Reply with one word: CORRECT or WRONG."
)
_VERDICT = re.compile(r"\b(CORRECT|WRONG|INCORRECT)\b", re.IGNORECASE)


class JudgeError(MemosError):
    """The judge gave no usable verdict for one question."""


@dataclass(frozen=True)
class JudgeSettings(Settings):
    section: ClassVar[str] = "judge"
    config_keys: ClassVar[Mapping[str, Any]] = {"generator": None}  # the Generator that grades (judge.generator)
    max_new_tokens: int = 8
    prompt: str = PROMPT  # {question}, {gold}, {prediction}; the QA protocol passes its pinned judge prompt

    def validate(self) -> None:
        positive_int(self, "max_new_tokens")


class LLMJudge:
    settings_class = JudgeSettings

    def __init__(self, generator: Generator, **settings: Any) -> None:
        self.settings = JudgeSettings.from_mapping(settings)
        self.generator = generator
        self.prompt = self.settings.prompt
        self.max_new_tokens = self.settings.max_new_tokens
        self.prompt_tokens = 0  # usage over every verdict asked for
        self.completion_tokens = 0

    def judge(self, question: str, gold: str, prediction: str) -> bool:
        """True for CORRECT, False for WRONG; JudgeError when no verdict could be had."""
        (verdict,) = self._verdicts([(question, gold, prediction)])
        if isinstance(verdict, str):
            raise JudgeError(verdict)
        return verdict

    def judge_many(self, items: Sequence[tuple[str, str, str]]) -> list[bool | None]:
        """Verdicts for (question, gold, prediction) triples, asked concurrently; None where none was had."""
        return [None if isinstance(v, str) else v for v in self._verdicts(items)]

    def _verdicts(self, items: Sequence[tuple[str, str, str]]) -> list[bool | str]:
        requests = [
            ChatRequest.user(self.prompt.format(question=q, gold=g, prediction=p), request_id=str(i))
            for i, (q, g, p) in enumerate(items)
        ]
        verdicts: list[bool | str] = []
        for generation in self.generator.generate(requests, self.max_new_tokens):
            self.prompt_tokens += generation.prompt_tokens
            self.completion_tokens += generation.completion_tokens
            if generation.failed:
                verdicts.append(f"judge {self.generator.name} failed: {generation.error}")
                continue
            match = _VERDICT.search(generation.text)
            if match is None:
                verdicts.append(f"judge answered neither CORRECT nor WRONG: {generation.text[:80]!r}")
                continue
            verdicts.append(match.group(1).upper() == "CORRECT")
        return verdicts
