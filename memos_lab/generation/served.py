"""The served backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp server,
Ollama, `transformers serve`, OpenAI itself), through the `openai` client.

- The key is read from the environment variable *named* by `api_key_env`; it never enters a config, a log,
  provenance or W&B (`describe` names the variable, not its value).
- Greedy: temperature 0 and, where the server takes one, `seed`. What a server honours is its own affair
  (`transformers serve` reports temperature as ignored and decodes greedily by default).
- `concurrency` requests are in flight at once; the client retries connection errors, 408/409/429 and 5xx
  `max_retries` times with exponential backoff, each attempt bounded by `timeout_s`.
- A request that still fails is a `Generation` with `error` set; after `max_consecutive_failures` in a row
  the server is taken for dead and the remaining requests fail at once (a few timeouts, not one per question).
- At construction one 1-token request checks the URL, the key and the model name, so a wrong setting is
  one line before any work starts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest, Generation, Generator, check_max_new_tokens
from memos_lab.settings import Settings, non_negative_int, positive, positive_int

NO_KEY = "no-key"
MISSING = "???"  # OmegaConf's mark of a value the user must give  # the client insists on a key; servers that take none ignore this one


@dataclass(frozen=True)
class ServedSettings(Settings):
    section: ClassVar[str] = "llm"
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the name the server serves the model under
    api_key_env: str | None = None  # the NAME of the environment variable holding the key; null: no key
    timeout_s: float = 60.0  # per attempt
    max_retries: int = 2  # connection errors, 408/409/429 and 5xx, with exponential backoff (the client's)
    concurrency: int = 8  # requests in flight at once
    seed: int | None = 0  # sent with each request, for servers that take one
    stream: bool = False  # stream the answer: measures the time to the first token
    max_consecutive_failures: int = 5  # then the server is taken for dead
    check: bool = True  # one 1-token request at start

    def validate(self) -> None:
        if MISSING in (self.base_url, self.model):
            return  # not given yet: Hydra names the missing value when the generator is built
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{self.section}.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}"
            )
        if not self.model.strip():
            raise ConfigError(f"{self.section}.model must name the model the server serves")
        positive(self, "timeout_s")
        positive_int(self, "concurrency", "max_consecutive_failures")
        non_negative_int(self, "max_retries")


class ServedGenerator(Generator):
    settings_class = ServedSettings

    def __init__(self, base_url: str, model: str, **settings: Any) -> None:
        self.settings = ServedSettings.from_mapping({"base_url": base_url, "model": model, **settings})
        key = NO_KEY
        if self.settings.api_key_env:
            key = os.environ.get(self.settings.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"llm.api_key_env: the environment variable {self.settings.api_key_env} is not set; export it "
                    "with the server's key, or set llm.api_key_env=null for a server that takes none"
                )
        self.name = self.model = model
        self.base_url = base_url.rstrip("/")
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key,
            timeout=float(self.settings.timeout_s),
            max_retries=self.settings.max_retries,
        )
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self.served_as: str | None = None  # the model name the server answers with
        if self.settings.check:
            self._check()

    def describe(self) -> dict[str, str]:
        return {
            "backend": "openai_compatible",
            "model": self.model,
            "served_as": self.served_as or "",
            "base_url": self.base_url,
            "api_key_env": self.settings.api_key_env or "",
        }

    def close(self) -> None:
        self._client.close()

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int) -> list[Generation]:
        check_max_new_tokens(max_new_tokens)
        if len(requests) <= 1 or self.settings.concurrency == 1:
            return [self._one(request, max_new_tokens) for request in requests]
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
            return list(pool.map(lambda request: self._one(request, max_new_tokens), requests))

    # ---- one request ---------------------------------------------------------------------------

    def _one(self, request: ChatRequest, max_new_tokens: int) -> Generation:
        with self._lock:
            dead = self._failures_in_a_row >= self.settings.max_consecutive_failures
        if dead:
            return Generation.failure(
                f"{self.base_url} skipped after {self._failures_in_a_row} failures in a row", request.request_id
            )
        started = time.perf_counter()
        try:
            generation = self._call(request, max_new_tokens, started)
        except (openai.OpenAIError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            generation = Generation.failure(_describe_error(error), request.request_id, _ms_since(started))
        with self._lock:
            self._failures_in_a_row = self._failures_in_a_row + 1 if generation.failed else 0
        return generation

    def _options(self, max_new_tokens: int) -> dict[str, Any]:
        options: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0}
        if self.settings.seed is not None:
            options["seed"] = self.settings.seed
        return options

    def _call(self, request: ChatRequest, max_new_tokens: int, started: float) -> Generation:
        messages = cast(list[ChatCompletionMessageParam], [dict(m) for m in request.messages])  # role/content dicts
        if self.settings.stream:
            return self._streamed(request, messages, max_new_tokens, started)
        response = self._client.chat.completions.create(messages=messages, **self._options(max_new_tokens))
        content = response.choices[0].message.content
        if not isinstance(content, str):
            raise ValueError(f"the reply holds no text (content={content!r})")
        usage = response.usage
        return Generation(
            text=content,
            prompt_tokens=int(usage.prompt_tokens) if usage else 0,
            completion_tokens=int(usage.completion_tokens) if usage else 0,
            latency_ms=_ms_since(started),
            request_id=request.request_id,
            details={"served_as": str(response.model)},
        )

    def _streamed(
        self, request: ChatRequest, messages: list[ChatCompletionMessageParam], max_new_tokens: int, started: float
    ) -> Generation:
        """Streaming tells the time to the first token; the last chunk carries the usage."""
        parts: list[str] = []
        first_at: float | None = None
        prompt_tokens = completion_tokens = 0
        served_as = ""
        stream = self._client.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **self._options(max_new_tokens)
        )
        for chunk in stream:
            served_as = str(chunk.model or served_as)
            if chunk.usage is not None:
                prompt_tokens, completion_tokens = int(chunk.usage.prompt_tokens), int(chunk.usage.completion_tokens)
            for choice in chunk.choices:
                if choice.delta.content:
                    first_at = first_at or time.perf_counter()
                    parts.append(choice.delta.content)
        return Generation(
            text="".join(parts),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=_ms_since(started),
            ttft_ms=None if first_at is None else (first_at - started) * 1000,
            request_id=request.request_id,
            details={"served_as": served_as},
        )

    # ---- the check at start ----------------------------------------------------------------------

    def _check(self) -> None:
        """One 1-token request: a wrong URL, key or model name is one line now, not a failure per question."""
        try:
            response = self._client.chat.completions.create(
                messages=[{"role": "user", "content": "Say OK."}], **self._options(1)
            )
            self.served_as = str(response.model)
        except openai.APIConnectionError as error:  # APITimeoutError included
            raise ConfigError(
                f"llm.base_url: cannot reach {self.base_url} ({_describe_error(error)}); is the server running?"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise ConfigError(
                f"llm.api_key_env: {self.base_url} refused the key in {self.settings.api_key_env or '(none set)'} ({_describe_error(error)})"
            ) from None
        except openai.NotFoundError as error:
            raise ConfigError(
                f"llm.model: {self.base_url} does not serve {self.model!r}, or has no /chat/completions "
                f"({_describe_error(error)}){self._served_models()}"
            ) from None
        except openai.APIStatusError as error:
            raise ConfigError(
                f"llm: {self.base_url} answered a test request for model {self.model!r} with HTTP {error.status_code} "
                f"({_describe_error(error)}){self._served_models()}"
            ) from None
        except openai.OpenAIError as error:
            raise ConfigError(
                f"llm: {self.base_url} sent no usable reply to a test request ({_describe_error(error)})"
            ) from None

    def _served_models(self) -> str:
        try:
            names = [entry.id for entry in self._client.models.list()]
        except openai.OpenAIError:
            return ""
        return f"; it serves: {', '.join(names[:10])}" if names else ""


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe_error(error: BaseException) -> str:
    """One line, without a response body's full dump."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"
