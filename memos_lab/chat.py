"""MemChat: the memory-augmented answer loop.

For each question the scheduler retrieves and assembles working memory, and the local model answers
greedily with the memories as text in the system prompt (mode `text`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from memos_lab.errors import ConfigError
from memos_lab.memory.item import MemoryItem
from memos_lab.models.llm import LanguageModel
from memos_lab.scheduler.base import MemScheduler

INSTRUCTIONS = (
    "You answer questions about past conversations using only the memories below. "
    "Answer in a few words. If the memories do not contain the answer, answer: not mentioned."
)
MODES = ("text",)


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    memory_ids: tuple[str, ...]
    context_tokens: int  # tokens of the memory block (the system message) in the prompt
    prompt_tokens: int
    prefilled_tokens: int  # prompt tokens run through the model (the rest came from a cache)
    ttft_ms: float  # prefill until the first answer token
    answer_ms: float  # retrieval, scheduling and generation


def memory_line(item: MemoryItem) -> str:
    date = (item.metadata.event_time or "")[:10]
    return f"- [{date}] {item.text}" if date else f"- {item.text}"


def system_message(memories: list[MemoryItem], instructions: str = INSTRUCTIONS) -> str:
    lines = "\n".join(memory_line(item) for item in memories) or "(none)"
    return f"{instructions}\n\nMemories:\n{lines}"


class MemChat:
    def __init__(
        self,
        scheduler: MemScheduler,
        model: LanguageModel,
        mode: str = "text",
        max_new_tokens: int = 24,
        instructions: str = INSTRUCTIONS,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"chat mode {mode!r} is not one of {list(MODES)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.scheduler = scheduler
        self.model = model
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.instructions = instructions

    def ask(self, question: str) -> ChatAnswer:
        started = time.perf_counter()
        memories = self.scheduler.on_user_turn(question)
        system = system_message(memories, self.instructions)
        context_ids = self.model.encode_chat([{"role": "system", "content": system}], add_generation_prompt=False)
        prompt_ids = self.model.encode_chat(
            [{"role": "system", "content": system}, {"role": "user", "content": question}]
        )
        new_ids, ttft_s = greedy_generate(self.model, prompt_ids, self.max_new_tokens)
        text = self.model.tokenizer.decode(new_ids, skip_special_tokens=True).strip().split("\n")[0].strip()
        self.scheduler.on_answer(text)
        return ChatAnswer(
            text=text,
            memory_ids=tuple(item.id for item in memories),
            context_tokens=len(context_ids),
            prompt_tokens=len(prompt_ids),
            prefilled_tokens=len(prompt_ids),
            ttft_ms=ttft_s * 1000,
            answer_ms=(time.perf_counter() - started) * 1000,
        )


def stop_token_ids(model: LanguageModel) -> set[int]:
    tokenizer = model.tokenizer
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id}


@torch.no_grad()
def greedy_generate(model: LanguageModel, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    """Greedy decoding with the model's KV cache; returns the new token ids and the time to the first one."""
    started = time.perf_counter()
    stops = stop_token_ids(model)
    inputs = torch.tensor([prompt_ids])
    past = None
    new: list[int] = []
    ttft = 0.0
    for _ in range(max_new_tokens):
        out = model.model(input_ids=inputs, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = int(out.logits[0, -1].argmax())
        if not new:
            ttft = time.perf_counter() - started
        if token in stops:
            break
        new.append(token)
        inputs = torch.tensor([[token]])
    return new, ttft
