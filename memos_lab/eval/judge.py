"""Optional LLM judge through any OpenAI-compatible chat-completions endpoint (plain HTTP, stdlib only).

A judge that is down, slow or answers garbage raises `JudgeError` for that question; the experiment
counts it as a failure and goes on. After `max_consecutive_failures` in a row the judge stops calling
the endpoint, so a dead server costs a few timeouts, not one per question.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from memos_lab.errors import ConfigError, MemosError

PROMPT = (
    "You grade answers to questions about a conversation. Compare the generated answer with the gold answer: "
    "it is CORRECT if it states the same fact (wording, extra detail and date formats may differ), WRONG otherwise.\n"
    "Question: {question}\nGold answer: {gold}\nGenerated answer: {prediction}\n"
    "Reply with one word: CORRECT or WRONG."
)
_VERDICT = re.compile(r"\b(CORRECT|WRONG|INCORRECT)\b", re.IGNORECASE)


class JudgeError(MemosError):
    """The judge gave no usable verdict for one question."""


class OpenAICompatibleJudge:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_consecutive_failures: int = 5,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"judge.base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ConfigError("judge.model must name the endpoint's model")
        if timeout_s <= 0 or max_consecutive_failures <= 0:
            raise ConfigError("judge.timeout_s and judge.max_consecutive_failures must be positive")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._failures_in_a_row = 0

    def judge(self, question: str, gold: str, prediction: str) -> bool:
        """True for CORRECT, False for WRONG; JudgeError when no verdict could be had."""
        return self.verdict(PROMPT.format(question=question, gold=gold, prediction=prediction))

    def verdict(self, prompt: str) -> bool:
        """The verdict on a rendered judge prompt (e.g. a pinned one from conf/prompt/)."""
        if self._failures_in_a_row >= self.max_consecutive_failures:
            raise JudgeError(f"judge disabled after {self._failures_in_a_row} failures in a row")
        try:
            verdict = self._ask(prompt)
        except JudgeError:
            self._failures_in_a_row += 1
            raise
        self._failures_in_a_row = 0
        return verdict

    def _ask(self, prompt: str) -> bool:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 8}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise JudgeError(f"judge endpoint {self.url} failed: {error}") from error
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"judge endpoint {self.url} sent no chat completion: {error!r}") from error
        match = _VERDICT.search(str(content))
        if match is None:
            raise JudgeError(f"judge answered neither CORRECT nor WRONG: {str(content)[:80]!r}")
        return match.group(1).upper() == "CORRECT"
