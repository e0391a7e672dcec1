"""The served backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp server,
Ollama, `transformers serve`, OpenAI itself), through the `openai` client.

- The key is read from the environment variable *named* by `api_key_env`; it never enters a config, a log,
  provenance or W&B (`describe` names the variable, not its value).
- Greedy: temperature 0 and, where the server takes one, `seed`. What a server honours is its own affair
  (`transformers serve` reports temperature as ignored and decodes greedily by default).
- `concurrency` requests are in flight at once; connection errors, timeouts, 408/409/429 and 5xx are retried
  `max_retries` times, waiting 0.5 s, 1 s, 2 s... (at most 8 s; a server's Retry-After is not obeyed).
- Every attempt is bounded whatever the server does (bounded_http.py): `timeout_s` in all, from connecting
  to the last byte (a server dripping a byte a second is cut at `timeout_s`), and `max_reply_bytes` of reply.
  A streamed answer longer than `max_new_tokens` pieces is cut. So one question takes at most
  `timeout_s * (max_retries + 1)` plus the waits between attempts (`worst_case_s`). The bounded transport
  goes straight to `base_url`: the HTTP(S)_PROXY variables are not used.
- A reply that does not follow the protocol (no text, usage counts that are not non-negative integers,
  bodies that are not JSON...) is a failed request, never an exception.
- A request that still fails is a `Generation` with `error` set; after `max_consecutive_failures` in a row
  the server is taken for dead and the remaining requests fail at once (a few timeouts, not one per question).
- At construction one 1-token request checks the URL, the key and the model name, so a wrong setting is
  one line before any work starts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest, Generation, Generator, check_max_new_tokens
from memos_lab.generation.bounded_http import BoundedTransport, ReplyTooLarge, attempt
from memos_lab.settings import Settings, non_negative_int, positive, positive_int

T = TypeVar("T")
NO_KEY = "no-key"
MISSING = "???"  # OmegaConf's mark of a value the user must give  # the client insists on a key; servers that take none ignore this one
FIRST_BACKOFF_S = 0.5  # the wait before the first retry, doubled for each next one (the openai client's schedule)
MAX_BACKOFF_S = 8.0
RETRIED_STATUS = frozenset({408, 409, 429})  # and every 5xx
MAX_USAGE_TOKENS = 1 << 40  # a usage count above this is not a count
# Errors a hostile or broken reply can raise while it is parsed: each makes that request a counted failure.
REPLY_ERRORS = (
    openai.OpenAIError, httpx2.HTTPError, ReplyTooLarge, ValueError, LookupError, TypeError,
    AttributeError, RecursionError,
)  # fmt: skip


@dataclass(frozen=True)
class ServedSettings(Settings):
    section: ClassVar[str] = "llm"
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the name the server serves the model under
    api_key_env: str | None = None  # the NAME of the environment variable holding the key; null: no key
    timeout_s: float = 60.0  # per attempt, in all: connect, send, wait and read the whole reply
    max_retries: int = 2  # connection errors, timeouts, 408/409/429 and 5xx, with exponential backoff
    max_reply_bytes: int = 4 << 20  # a reply (headers and body, or a whole stream) larger than this fails
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
        positive_int(self, "concurrency", "max_consecutive_failures", "max_reply_bytes")
        non_negative_int(self, "max_retries")

    @property
    def worst_case_s(self) -> float:
        """The longest one question can take: every attempt to its deadline, and the waits between them."""
        return self.timeout_s * (self.max_retries + 1) + sum(backoff_s(k) for k in range(self.max_retries))


def backoff_s(retry: int) -> float:
    """The longest wait before retry number `retry` (from 0); the wait itself is jittered down by up to 25%."""
    return min(FIRST_BACKOFF_S * 2.0**retry, MAX_BACKOFF_S)


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
        limits = httpx2.Limits(max_connections=self.settings.concurrency + 1, max_keepalive_connections=None)
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key,
            timeout=float(self.settings.timeout_s),
            max_retries=0,  # retried here, so that the attempts and the waits between them are bounded
            http_client=openai.DefaultHttpxClient(transport=BoundedTransport(limits), limits=limits),
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
            generation = self._with_retries(lambda: self._call(request, max_new_tokens, started))
        except REPLY_ERRORS as error:
            generation = Generation.failure(_describe_error(error), request.request_id, _ms_since(started))
        with self._lock:
            self._failures_in_a_row = self._failures_in_a_row + 1 if generation.failed else 0
        return generation

    def _with_retries(self, send: Callable[[], T]) -> T:
        """`send()` once per attempt, each within `timeout_s` and `max_reply_bytes`; retried as the module says."""
        retry = 0
        while True:
            try:
                with attempt(self.settings.timeout_s, self.settings.max_reply_bytes):
                    return send()
            except (openai.APIConnectionError, openai.APIStatusError) as error:  # APITimeoutError included
                if retry >= self.settings.max_retries or not _worth_retrying(error):
                    raise
            time.sleep(backoff_s(retry) * (1 - 0.25 * random.random()))  # jitter: concurrent retries spread out
            retry += 1

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
            raise ValueError(f"the reply holds no text (content={content!r:.60})")
        prompt_tokens, completion_tokens = _usage(response.usage)
        return Generation(
            text=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=_ms_since(started),
            request_id=request.request_id,
            details={"served_as": _one_line(response.model)},
        )

    def _streamed(
        self, request: ChatRequest, messages: list[ChatCompletionMessageParam], max_new_tokens: int, started: float
    ) -> Generation:
        """Streaming tells the time to the first token; the last chunk carries the usage. More pieces of answer
        than `max_new_tokens` (each chunk holds at least one token) mean the server ignores the limit: cut."""
        parts: list[str] = []
        first_at: float | None = None
        prompt_tokens = completion_tokens = 0
        served_as: object = ""
        chunks = 0
        stream = self._client.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **self._options(max_new_tokens)
        )
        with stream:  # leaving early closes the connection instead of reading on
            for chunk in stream:
                chunks += 1
                served_as = chunk.model or served_as
                if chunk.usage is not None:
                    prompt_tokens, completion_tokens = _usage(chunk.usage)
                for choice in chunk.choices:
                    content = choice.delta.content
                    if content is None or content == "":
                        continue
                    if not isinstance(content, str):
                        raise ValueError(f"a streamed piece of answer is not text ({content!r:.60})")
                    if len(parts) == max_new_tokens:
                        raise ValueError(f"the server streamed more than max_new_tokens={max_new_tokens} pieces; cut")
                    first_at = first_at or time.perf_counter()
                    parts.append(content)
        if not chunks:
            raise ValueError("the reply holds no streamed chunk (is it a stream?)")
        return Generation(
            text="".join(parts),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=_ms_since(started),
            ttft_ms=None if first_at is None else (first_at - started) * 1000,
            request_id=request.request_id,
            details={"served_as": _one_line(served_as)},
        )

    # ---- the check at start ----------------------------------------------------------------------

    def _check(self) -> None:
        """One 1-token request: a wrong URL, key or model name is one line now, not a failure per question."""
        try:
            response = self._with_retries(
                lambda: self._client.chat.completions.create(
                    messages=[{"role": "user", "content": "Say OK."}], **self._options(1)
                )
            )
            self.served_as = _one_line(response.model)
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
        except REPLY_ERRORS as error:
            raise ConfigError(
                f"llm: {self.base_url} sent no usable reply to a test request ({_describe_error(error)})"
            ) from None

    def _served_models(self) -> str:
        try:
            with attempt(self.settings.timeout_s, self.settings.max_reply_bytes):
                names = [_one_line(entry.id, 80) for entry in self._client.models.list()]
        except REPLY_ERRORS:
            return ""
        return f"; it serves: {', '.join(names[:10])}" if names else ""


def _worth_retrying(error: openai.APIConnectionError | openai.APIStatusError) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRIED_STATUS or error.status_code >= 500
    return True  # no connection, or the attempt's deadline passed


def _usage(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a reply's `usage`, (0, 0) when it has none; ValueError unless counts."""
    if usage is None:
        return 0, 0
    return _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens")


def _token_count(usage: Any, name: str) -> int:
    value = getattr(usage, name, None)
    if isinstance(value, float) and value.is_integer():  # 12.0; never inf or nan
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_USAGE_TOKENS:
        raise ValueError(f"usage.{name} is not a token count: {value!r:.40}")
    return value


def _one_line(value: object, limit: int = 200) -> str:
    """A server-given name as one printable line: it reaches provenance and reports."""
    text = " ".join(str(value).split())
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe_error(error: BaseException) -> str:
    """One line, without a response body's full dump."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"
