"""MemChat: the memory-augmented answer loop.

For each question the scheduler retrieves and assembles working memory, and the local model answers
greedily in one of three modes:
- `text`: the memories as text in the system message, the whole prompt prefilled every time;
- `kv`: the same prompt, but the system message's KV cache comes from the activation tier (an exact
  prefix, built from the longest cached one when the working memory changed), so only the question is
  prefilled: the same computation, so the same answer token for token;
- `parametric`: no memories in the prompt; the parametric memory's adapter answers from its weights.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from memos_lab.errors import ConfigError
from memos_lab.eval.kv import common_prefix_len
from memos_lab.memory.activation.kv_cache import KVCache, KVCacheMemory, memory_messages, prefill
from memos_lab.memory.item import MemoryItem
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.llm import LanguageModel
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
    token_ids: tuple[int, ...]  # the generated tokens (the text is their first line)
    memory_ids: tuple[str, ...]  # the working memory when the question was asked
    context_tokens: int  # tokens of the system message (memories and instructions) in the prompt
    prompt_tokens: int
    prefilled_tokens: int  # tokens run through the model before the first answer token, cache building included
    ttft_ms: float  # from the assembled working memory to the first answer token
    answer_ms: float  # retrieval, scheduling and generation
    kv_hit: bool | None = None  # kv mode: the working memory's cache was already in the activation tier


def memory_line(item: MemoryItem) -> str:
    date = (item.metadata.event_time or "")[:10]
    return f"[{date}] {item.text}" if date else item.text


class MemChat:
    def __init__(
        self,
        scheduler: MemScheduler,
        model: LanguageModel,
        mode: str = "text",
        max_new_tokens: int = 24,
        activation: KVCacheMemory | None = None,
        parametric: ParametricMemory | None = None,
        template: str = TEMPLATE,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"chat mode {mode!r} is not one of {list(MODES)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if mode == "kv" and activation is None:
            raise ConfigError("chat mode 'kv' needs an activation memory (a KVCacheMemory of the same model)")
        if mode == "parametric" and parametric is None:
            raise ConfigError("chat mode 'parametric' needs a parametric memory (e.g. a LoRAMemory)")
        self.scheduler = scheduler
        self.model = model
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.activation = activation
        self.parametric = parametric
        # kv mode must render exactly the text its caches were built from
        self.template = activation.template if mode == "kv" else template

    def messages(self, lines: list[str], question: str) -> list[dict[str, str]]:
        if self.mode == "parametric":
            return [{"role": "system", "content": PARAMETRIC_INSTRUCTIONS}, {"role": "user", "content": question}]
        return [*memory_messages(lines, self.template), {"role": "user", "content": question}]

    def ask(self, question: str) -> ChatAnswer:
        started = time.perf_counter()
        memories = self.scheduler.on_user_turn(question)
        assembled = time.perf_counter()
        lines = [memory_line(item) for item in memories] or ["(none)"]
        messages = self.messages(lines, question)
        prompt_ids = self.model.encode_chat(messages)
        context_tokens = len(self.model.encode_chat(messages[:1], add_generation_prompt=False))
        prefix, built, kv_hit = None, 0, None
        if self.mode == "kv":
            prefix, built, kv_hit = self._memory_cache(memories, lines)
        applied = self.parametric.applied() if self.mode == "parametric" else nullcontext()
        with applied:
            new_ids, first_token_at, reused = greedy_generate(self.model, prompt_ids, self.max_new_tokens, prefix)
        text = self.model.tokenizer.decode(new_ids, skip_special_tokens=True).strip().split("\n")[0].strip()
        self.scheduler.on_answer(text)
        return ChatAnswer(
            text=text,
            token_ids=tuple(new_ids),
            memory_ids=tuple(item.id for item in memories),
            context_tokens=context_tokens,
            prompt_tokens=len(prompt_ids),
            prefilled_tokens=built + len(prompt_ids) - reused,
            ttft_ms=(first_token_at - assembled) * 1000,
            answer_ms=(time.perf_counter() - started) * 1000,
            kv_hit=kv_hit,
        )

    def _memory_cache(self, memories: list[MemoryItem], lines: list[str]) -> tuple[KVCache, int, bool]:
        """The system message's cache from the activation tier: (cache, tokens computed to build it, hit)."""
        activation = self.activation
        ids = activation.prompt_ids(lines)
        key = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:24]
        if isinstance(activation.budget.policy, PolicyEviction):
            activation.budget.policy.record(key, memories, len(ids))
        if key in activation.keys():
            return activation.get(key), 0, True
        _, best = activation.best_prefix(ids)
        shared = min(common_prefix_len(best.token_ids, ids), len(ids) - 1) if best is not None else 0
        return activation.add_set(key, lines), len(ids) - shared, False


def stop_token_ids(model: LanguageModel) -> set[int]:
    tokenizer = model.tokenizer
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id}


@torch.no_grad()
def greedy_generate(
    model: LanguageModel, prompt_ids: list[int], max_new_tokens: int, prefix: KVCache | None = None
) -> tuple[list[int], float, int]:
    """Greedy decoding, reusing `prefix` where it matches the prompt token for token.

    Returns the new token ids, the perf_counter time of the first one, and the prompt tokens reused.
    """
    stops = stop_token_ids(model)
    result = prefill(model, prompt_ids, prefix)
    token = int(result.logits.argmax())
    first_token_at = time.perf_counter()
    cache, new = result.cache, []
    while token not in stops and len(new) < max_new_tokens:
        new.append(token)
        if len(new) == max_new_tokens:
            break
        out = model.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = int(out.logits[0, -1].argmax())
    return new, first_token_at, result.reused
