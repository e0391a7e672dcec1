"""MemChat: the memory-augmented answer loop.

For each question the scheduler retrieves and assembles working memory, and the answering model (a
`Generator`: local, or served for the text mode) answers greedily in one of three modes:
- `text`: the memories as text in the system message, the whole prompt prefilled every time;
- `kv`: the same prompt, but the system message's KV cache comes from the activation tier: the working
  memory's cache when it is stored, else composed by the `compose` strategy from the per-memory caches.
  Memories without one are encoded at question time; with `encode_on_write`, every memory's chunk is
  encoded when it is written to the cube instead, off the question's path. With `exact` (the default)
  every token after the longest stored prefix is recomputed: the same computation, so the same answer
  token for token; the other strategies recompute less and answer approximately
  (memos_lab/memory/activation/compose/);
- `parametric`: no memories in the prompt; the parametric memory's adapter answers from its weights.

With `compare_text`, kv mode also answers every question in the text form (the same prompt prefilled whole,
no cache), before or after the kv answer in turn so that load drifts hit both alike: the reference that
first-token and answer agreement and the TTFT ratio are measured against, on the same working memory.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import cast

from memos_lab.errors import ConfigError, IncompatibleError
from memos_lab.generation.base import ChatRequest, Generator, answer_one, check_max_new_tokens
from memos_lab.memory.activation.base import ActivationMemory, StoreSync
from memos_lab.memory.activation.compose.base import CompositionStrategy
from memos_lab.memory.activation.compose.exact import ExactComposition
from memos_lab.memory.activation.template import memory_messages
from memos_lab.memory.item import MemoryItem, memory_line
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.decode import KVCache, greedy
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
class TextForm:
    """The text form's answer to the prompt a kv-mode answer was given (see `MemChat(compare_text=True)`)."""

    token_ids: tuple[int, ...]  # its greedy answer tokens
    ttft_ms: float  # its prefill of the whole prompt and the first token


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
    kv_recomputed_tokens: int | None = None  # kv mode: system-message tokens whose KV was computed fresh
    kv_bytes_copied: int | None = None  # kv mode: bytes read from stored caches to compose the working memory
    kv_encoded_tokens: int | None = None  # kv mode: tokens of memories without a cache, encoded alone and stored
    text_form: TextForm | None = None  # kv mode with compare_text: the text form's answer to the same prompt


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
        strategy: CompositionStrategy | None = None,
        compare_text: bool = False,
        encode_on_write: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"chat mode {mode!r} is not one of {list(MODES)}")
        if compare_text and mode != "kv":
            raise ConfigError(f"compare_text compares kv mode with the text form; chat mode is {mode!r}")
        if encode_on_write and mode != "kv":
            raise ConfigError(f"encode_on_write caches memories' KV for kv mode; chat mode is {mode!r}")
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
        self.strategy = strategy or ExactComposition()
        self.compare_text = compare_text
        self._asked = 0  # questions answered: which of the kv and text forms goes first
        # kv mode must render exactly the text its caches were built from
        if mode == "kv":
            assert activation is not None  # checked above
            model = generator.require_weights("chat mode 'kv'")
            if activation.model.fingerprint() != model.fingerprint():
                raise IncompatibleError(
                    f"the activation memory holds caches of model {activation.model.name}; "
                    f"the answering model is {model.name}"
                )
            self.strategy.check(model)
            self.template = activation.template
            self.store_sync: StoreSync | None = StoreSync(activation, scheduler.cube_id, encode_on_write)
            scheduler.mos.attach(self.store_sync)
        else:
            self.store_sync = None
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
        kv_hit = recomputed = copied = encoded = None
        text_form, reference_s = None, 0.0
        if self.mode == "kv":
            assert model is not None  # kv mode required the generator's weights in __init__
            text_first = self._asked % 2 == 0
            if self.compare_text and text_first:
                text_form = self._text_form(messages)
                reference_s = clock(device) - assembled  # the text form's turn is not the kv answer's time
                assembled += reference_s
            answer_ids, first_token_at, prefilled, prompt_tokens, kv_hit, recomputed, copied, encoded = self._ask_kv(
                memories, lines, messages
            )
            if self.compare_text and not text_first:
                reference_started = clock(device)
                text_form = self._text_form(messages)
                reference_s = clock(device) - reference_started
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
        self._asked += 1
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
            answer_ms=(clock(device) - started - reference_s) * 1000,
            kv_hit=kv_hit,
            completion_tokens=completion_tokens,
            kv_recomputed_tokens=recomputed,
            kv_bytes_copied=copied,
            kv_encoded_tokens=encoded,
            text_form=text_form,
        )

    def _text_form(self, messages: list[dict[str, str]]) -> TextForm:
        """The text form's greedy answer to `messages`: the whole prompt prefilled, no cache."""
        model = self.generator.require_weights("chat mode 'kv'")
        started = clock(model.device)
        decoded = greedy(model, model.encode_chat(messages), self.max_new_tokens)
        return TextForm(tuple(decoded.token_ids), (decoded.first_token_at - started) * 1000)

    def _ask_kv(
        self, memories: list[MemoryItem], lines: list[str], messages: list[dict[str, str]]
    ) -> tuple[list[int], float, int, int, bool, int, int, int]:
        """Greedy answer from the memory's cache: (ids, first token time, prefilled, prompt tokens, hit,
        recomputed system-message tokens, bytes copied, tokens of new memories encoded)."""
        model = self.generator.require_weights("chat mode 'kv'")
        prompt_ids = model.encode_chat(messages)
        prefix, built, kv_hit, recomputed, copied, encoded = self._memory_cache(memories, lines)
        decoded = greedy(model, prompt_ids, self.max_new_tokens, prefix)
        return (
            decoded.token_ids,
            decoded.first_token_at,
            built + len(prompt_ids) - decoded.reused,
            len(prompt_ids),
            kv_hit,
            recomputed,
            copied,
            encoded,
        )

    def _memory_cache(self, memories: list[MemoryItem], lines: list[str]) -> tuple[KVCache, int, bool, int, int, int]:
        """The system message's cache from the activation tier: (cache, tokens computed to build it, hit,
        tokens recomputed, bytes copied, tokens of new memories encoded). Stored per working memory and
        strategy, so a repeat is a hit."""
        activation = self.activation
        assert activation is not None  # kv mode: checked in __init__
        spec = f"{self.strategy.describe()}\n" + "\n".join(lines)
        key = "set:" + hashlib.sha256(spec.encode("utf-8")).hexdigest()[:24]
        eviction = activation.budget.policy if isinstance(activation.budget.policy, PolicyEviction) else None
        if key in activation.keys():
            cache = activation.get(key)
            if eviction is not None:
                eviction.record(key, memories, len(cache))
            return cache, 0, True, 0, 0, 0
        item_ids = [item.id for item in memories] if memories else None
        composed = activation.compose(lines, self.strategy, item_ids, key=key)
        if eviction is not None:
            eviction.record(key, memories, composed.context_tokens)
        computed = math.ceil(composed.computed_tokens)
        return (
            composed.cache, computed, False, composed.recomputed_tokens, composed.bytes_copied, composed.encoded_tokens
        )  # fmt: skip
