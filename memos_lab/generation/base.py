"""The one interface of every part that makes a model write text (the answerer, the `fine` reader, the
judge...): a `Generator` answers a batch of chat requests greedily and says, per request, what it cost.

Failure policy: a request that fails (a timeout, a server error, an unreadable reply, a prompt longer than
the model takes) comes back as a `Generation` with `error` set, so callers count failures per question and
go on; `generate` raises only for what no request could survive (a MemosError: bad settings, a server
that cannot be reached at all).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memos_lab.errors import ConfigError, MemosError

if TYPE_CHECKING:  # importing transformers costs seconds; the served backend never needs it
    from memos_lab.models.llm import LanguageModel


class GenerationError(MemosError):
    """A request got no answer (the caller counts it as a failed question)."""


@dataclass(frozen=True)
class ChatRequest:
    """One prompt: chat messages ({"role": ..., "content": ...}) answered after the assistant prompt."""

    messages: tuple[Mapping[str, str], ...]
    request_id: str = ""  # the caller's name for it (a question id), carried into logs

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, str]], request_id: str = "") -> ChatRequest:
        return cls(tuple(dict(m) for m in messages), request_id)

    @classmethod
    def user(cls, content: str, system: str | None = None, request_id: str = "") -> ChatRequest:
        """A single user message, after an optional system message."""
        messages = [{"role": "system", "content": system}] if system is not None else []
        return cls.of([*messages, {"role": "user", "content": content}], request_id)


@dataclass(frozen=True)
class Generation:
    """The answer to one request, or why there is none (`error`)."""

    text: str
    prompt_tokens: int = 0  # as the model counted them (a served model's `usage`)
    completion_tokens: int = 0
    latency_ms: float = 0.0  # request sent (or batch started) to the whole answer
    ttft_ms: float | None = None  # to the first answer token, where the backend can tell
    token_ids: tuple[int, ...] | None = None  # the answer's tokens, where the model runs in-process
    error: str | None = None  # why this request failed; None: it did not
    request_id: str = ""
    details: Mapping[str, str] = field(default_factory=dict)  # backend extras (the served model's name...)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @classmethod
    def failure(cls, error: str, request_id: str = "", latency_ms: float = 0.0) -> Generation:
        return cls(text="", error=error, request_id=request_id, latency_ms=latency_ms)


class Generator(ABC):
    """Answers chat requests greedily (temperature 0), one `Generation` per request, in order."""

    name: str  # the model, as reports name it

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int) -> list[Generation]:
        """Answers to `requests`, in order; a failed request is a Generation with `error` set."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """What provenance and reports record: backend, model, device and dtype or URL (never a key)."""

    @property
    def language_model(self) -> LanguageModel | None:
        """The in-process model (weights, tokenizer), or None for a served one."""
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for budgets; an estimate (4 characters a token) where no tokenizer is at hand."""
        return max(1, (len(text) + 3) // 4) if text else 0

    def close(self) -> None:
        """Release connections or threads (a no-op where there are none)."""

    def require_weights(self, why: str) -> LanguageModel:
        """The in-process model; ConfigError naming `why` when the model is served."""
        model = self.language_model
        if model is None:
            raise ConfigError(
                f"{why} needs the model's weights, which a served model does not expose; use llm=local "
                "(model=hf model.name_or_path=DIR) for it, or a text form with the served model"
            )
        return model


def answer_one(generator: Generator, request: ChatRequest, max_new_tokens: int) -> Generation:
    """One request through `generator`; GenerationError when it failed."""
    (generation,) = generator.generate([request], max_new_tokens)
    if generation.failed:
        raise GenerationError(f"{generator.name}: {generation.error}")
    return generation


def check_max_new_tokens(value: int, setting: str = "max_new_tokens") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{setting} must be a positive integer, got {value!r}")
    return value
