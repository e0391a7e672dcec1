"""A chat session that keeps its KV cache between turns and prefills only each turn's new tokens.

Each turn renders the whole chat with the model's template and compares the token ids with the cached
ones: only an exact common prefix is reused (re-tokenising a generated answer, or a template that rewrites
earlier turns, can change earlier ids; the cache is then cropped, never used blindly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from memos_lab.memory.activation.base import ActivationMemory
from memos_lab.memory.activation.kv_cache import KVCache, Prefill, generate, prefill
from memos_lab.models.decode import common_prefix_len
from memos_lab.models.llm import LanguageModel


class ChatSession:
    def __init__(
        self, lm: LanguageModel, memory: ActivationMemory | None = None, messages: Sequence[dict[str, str]] = ()
    ) -> None:
        self.lm = lm
        self.memory = memory  # stored memory caches are candidate prefixes too (e.g. for the first turn)
        self.messages = [dict(m) for m in messages]
        self.cache: KVCache | None = None
        self.reused_tokens = 0
        self.computed_tokens = 0

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def prompt_ids(self) -> list[int]:
        return self.lm.encode_chat(self.messages, add_generation_prompt=True)

    def prefix(self, ids: Sequence[int]) -> KVCache | None:
        """The cache to start `ids` from: the session's own or a stored memory's, whichever shares more."""
        candidates = [self.cache]
        if self.memory is not None:
            candidates.append(self.memory.best_prefix(ids)[1])
        known = [c for c in candidates if c is not None]
        return max(known, key=lambda c: common_prefix_len(c.token_ids, ids), default=None)

    def prefill(self) -> Prefill:
        """Next-token logits for the chat so far (plus the assistant prompt); the session keeps the cache."""
        ids = self.prompt_ids()
        result = prefill(self.lm, ids, self.prefix(ids))
        self.cache = result.snapshot()
        self._count(result.reused, result.computed)
        return result

    def reply(self, max_new_tokens: int = 64) -> str:
        """Generate the assistant's answer greedily, append it to the chat and keep the cache of both."""
        ids = self.prompt_ids()
        answer, self.cache, reused = generate(self.lm, ids, self.prefix(ids), max_new_tokens)
        self._count(reused, len(ids) - reused)
        text = cast(str, self.lm.tokenizer.decode(answer, skip_special_tokens=True))  # one sequence: one str
        self.add("assistant", text)
        return text

    def _count(self, reused: int, computed: int) -> None:
        self.reused_tokens += reused
        self.computed_tokens += computed
