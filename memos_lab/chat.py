"""MemChat: the memory-augmented answer loop.

For each question the scheduler retrieves and assembles working memory, and the answering model (a
`Generator`: local, or served for the text mode) answers greedily in one of three modes:
- `text`: the memories as text in the system message, the whole prompt prefilled every time;
- `kv`: the same prompt, but the system message's KV cache comes from the activation tier (an exact
  prefix, built from the longest cached one when the working memory changed), so only the question is
  prefilled: the same computation, so the same answer token for token;
- `parametric`: no memories in the prompt; the parametric memory's adapter answers from its weights.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import cast

from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest, Generator, answer_one, check_max_new_tokens
from memos_lab.memory.activation.base import ActivationMemory
from memos_lab.memory.activation.kv_cache import memory_messages
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.decode import KVCache, common_prefix_len, greedy
from memos_lab.models.device import clock
from memos_lab.scheduler.activation import PolicyEviction
from memos_lab.scheduler.base import MemScheduler

INSTRUCTIONS = (
    "You answer questions about past conversations using only the memories below. "
    "Answer in a few words. If the memories do not contain the answer, answer: not mentioned."
)
TEMPLATE = INSTRUCTIONS + "\n\nMemories:\n{memories}"
PARAMETRIC_INSTRUCTIONS = (
    "You answer questions about past conversations from what you remember. "
    "Answer in a few words. If you do not know, answer: not mentioned."
)
MODES = ("text", "kv", "parametric")


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    token_ids: tuple[int, ...] | None  # the generated tokens (the text is their first line); None when served
    memory_ids: tuple[str, ...]  # the working memory when the question was asked
    context_tokens: int  # tokens of the system message (memories and instructions) in the prompt
    prompt_tokens: int
    prefilled_tokens: int  # tokens run through the model before the first answer token, cache building included
    ttft_ms: float | None  # from the assembled working memory to the first answer token (None: not measurable)
    answer_ms: float  # retrieval, scheduling and generation
    kv_hit: bool | None = None  # kv mode: the working memory's cache was already in the activation tier
    completion_tokens: int = 0


def memory_line(item: MemoryItem) -> str:
    date = (item.metadata.event_time or "")[:10]
    return f"[{date}] {item.text}" if date else item.text


class MemChat:
    """Answers through `generator` (local or served); the `kv` and `parametric` modes need its weights."""

    def __init__(
        self,
        scheduler: MemScheduler,
        generator: Generator,
        mode: str = "text",
        max_new_tokens: int = 24,
        activation: ActivationMemory | None = None,
        parametric: ParametricMemory | None = None,
        template: str = TEMPLATE,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"chat mode {mode!r} is not one of {list(MODES)}")
        check_max_new_tokens(max_new_tokens)
        if mode in ("kv", "parametric"):
            generator.require_weights(f"chat mode {mode!r}")
        if mode == "kv" and activation is None:
            raise ConfigError("chat mode 'kv' needs an activation memory (e.g. a KVCacheMemory of the same model)")
        if mode == "parametric" and parametric is None:
            raise ConfigError("chat mode 'parametric' needs a parametric memory (e.g. a LoRAMemory)")
        self.scheduler = scheduler
        self.generator = generator
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.activation = activation
        self.parametric = parametric
        # kv mode must render exactly the text its caches were built from
        if mode == "kv":
            assert activation is not None  # checked above
            self.template = activation.template
        else:
            self.template = template

    def messages(self, lines: list[str], question: str) -> list[dict[str, str]]:
        if self.mode == "parametric":
            return [{"role": "system", "content": PARAMETRIC_INSTRUCTIONS}, {"role": "user", "content": question}]
        return [*memory_messages(lines, self.template), {"role": "user", "content": question}]

    def ask(self, question: str) -> ChatAnswer:
        """The answer to one question; GenerationError (a MemosError) when the model gave none."""
        model = self.generator.language_model
        device = model.device if model is not None else None
        started = clock(device)
        memories = self.scheduler.on_user_turn(question)
        assembled = clock(device)
        lines = [memory_line(item) for item in memories] or ["(none)"]
        messages = self.messages(lines, question)
        kv_hit = None
        if self.mode == "kv":
            assert model is not None  # kv mode required the generator's weights in __init__
            answer_ids, first_token_at, prefilled, prompt_tokens, kv_hit = self._ask_kv(memories, lines, messages)
            raw = cast(str, model.tokenizer.decode(answer_ids, skip_special_tokens=True))
            completion_tokens = len(answer_ids)
            token_ids: tuple[int, ...] | None = tuple(answer_ids)
            ttft_ms: float | None = (first_token_at - assembled) * 1000
        else:
            applied: AbstractContextManager[None]
            if self.mode == "parametric":
                assert self.parametric is not None  # checked in __init__
                applied = self.parametric.applied()
            else:
                applied = nullcontext()
            sent = clock(device)
            with applied:
                generation = answer_one(self.generator, ChatRequest.of(messages), self.max_new_tokens)
            raw, token_ids, completion_tokens = generation.text, generation.token_ids, generation.completion_tokens
            prompt_tokens = prefilled = generation.prompt_tokens
            ttft_ms = None if generation.ttft_ms is None else (sent - assembled) * 1000 + generation.ttft_ms
        text = raw.strip().split("\n")[0].strip()
        self.scheduler.on_answer(text)
        if model is not None:
            context_tokens = len(model.encode_chat(messages[:1], add_generation_prompt=False))
        else:
            context_tokens = self.generator.count_tokens(messages[0]["content"])
        return ChatAnswer(
            text=text,
            token_ids=token_ids,
            memory_ids=tuple(item.id for item in memories),
            context_tokens=context_tokens,
            prompt_tokens=prompt_tokens,
            prefilled_tokens=prefilled,
            ttft_ms=ttft_ms,
            answer_ms=(clock(device) - started) * 1000,
            kv_hit=kv_hit,
            completion_tokens=completion_tokens,
        )

    def _ask_kv(
        self, memories: list[MemoryItem], lines: list[str], messages: list[dict[str, str]]
    ) -> tuple[list[int], float, int, int, bool]:
        """Greedy answer from the memory's cached prefix: (ids, first token time, prefilled, prompt tokens, hit)."""
        model = self.generator.require_weights("chat mode 'kv'")
        prompt_ids = model.encode_chat(messages)
        prefix, built, kv_hit = self._memory_cache(memories, lines)
        decoded = greedy(model, prompt_ids, self.max_new_tokens, prefix)
        return (
            decoded.token_ids,
            decoded.first_token_at,
            built + len(prompt_ids) - decoded.reused,
            len(prompt_ids),
            kv_hit,
        )

    def _memory_cache(self, memories: list[MemoryItem], lines: list[str]) -> tuple[KVCache, int, bool]:
        """The system message's cache from the activation tier: (cache, tokens computed to build it, hit)."""
        activation = self.activation
        assert activation is not None  # kv mode: checked in __init__
        ids = activation.prompt_ids(lines)
        key = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:24]
        if isinstance(activation.budget.policy, PolicyEviction):
            activation.budget.policy.record(key, memories, len(ids))
        if key in activation.keys():
            return activation.get(key), 0, True
        _, best = activation.best_prefix(ids)
        shared = min(common_prefix_len(best.token_ids, ids), len(ids) - 1) if best is not None else 0
        return activation.add_set(key, lines), len(ids) - shared, False
