"""KV-cache reuse: prefill work, time to first token and exactness of reused caches versus full recompute.

`mode=dialogue`: each conversation's earlier turns are the user's memory (cached once, as `load` would);
its last `turns` exchanges are replayed as a chat session. For every turn the prompt (memory + history +
new user message) is prefilled (i) from scratch and (ii) from the session's cache, timed interleaved so
shared-machine noise hits both alike; logits and greedy answers are compared. The memories are also
composed from independently cached chunks (exact, re-rotated, re-rotated with recompute, naive) to
measure each mode's gap to the exact prefill.

`mode=sweep`: one memory of `memory_tokens` tokens plus a question of `question_tokens` tokens, full prefill
versus the cached memory (MemOS's short/medium/long table); sweep both with Hydra multirun.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.data.schema import Conversation, Turn
from memos_lab.errors import DataError
from memos_lab.eval.kv import ModelDims, perfect_prefix_reuse, prefill_flops
from memos_lab.experiments.common import ExperimentSettings, load_records
from memos_lab.loggers.base import Tracker
from memos_lab.memory.activation.base import ActivationMemory, build_activation
from memos_lab.memory.activation.compose import chunked_memory_prompt, compose_chunks, encode_chunks
from memos_lab.memory.activation.kv_cache import KVCache, Prefill, generate, memory_messages, prefill
from memos_lab.memory.activation.session import ChatSession
from memos_lab.models.device import clock
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import non_negative_int, one_of, positive_int, probability, uses_settings

PREFIX = "kv/"
MODES = ("dialogue", "sweep")


@dataclass
class Tally:
    """Per-prompt measurements of full recompute (i) and reuse (ii)."""

    prompt_tokens: list[int] = field(default_factory=list)
    reused_tokens: list[int] = field(default_factory=list)
    ttft_full_ms: list[float] = field(default_factory=list)
    ttft_reuse_ms: list[float] = field(default_factory=list)
    logit_diffs: list[float] = field(default_factory=list)
    greedy_matches: list[bool] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class KVReuseSettings(ExperimentSettings):
    mode: str = "dialogue"  # dialogue | sweep
    dialogues: int = 2  # dialogue mode: conversations replayed
    turns: int = 10  # dialogue mode: the last `turns` exchanges replayed, earlier turns are the cached memory
    memory_tokens: int = 800
    question_tokens: int = 32  # sweep mode only
    repeats: int = 3  # timed runs per prompt, full and reuse interleaved; the median counts
    max_new_tokens: int = 16  # greedy answers compared token for token (0 skips)
    compose_memories: int = 4  # memories composed from separately cached chunks (0 or 1 skips)
    recompute_frac: float = 0.15  # share of each later chunk's tokens recomputed in the blended mode

    def validate(self) -> None:
        one_of(self, "mode", MODES)
        positive_int(self, "dialogues", "turns", "repeats", "memory_tokens", "question_tokens")
        non_negative_int(self, "max_new_tokens", "compose_memories")
        probability(self, "recompute_frac")


@uses_settings(KVReuseSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = KVReuseSettings.from_mapping(cfg.experiment)
    conversations = load_records(cfg, Conversation)
    lm: LanguageModel = hydra.utils.instantiate(cfg.model)

    def new_memory() -> ActivationMemory:
        return build_activation(cfg.activation, lm)

    if exp.mode == "sweep":
        return _sweep(lm, conversations, exp, tracker, new_memory)
    return _dialogues(lm, conversations[: int(exp.dialogues)], exp, tracker, new_memory)


def _dialogues(
    lm: LanguageModel,
    conversations: list[Conversation],
    exp: KVReuseSettings,
    tracker: Tracker,
    new_memory: Callable[[], ActivationMemory],
) -> dict[str, float]:
    tally, cached_sequences = Tally(), []
    compose_gaps: dict[str, list[float]] = {}
    cache_bytes, cache_tokens = 0, 0
    for index, conversation in enumerate(conversations):
        turns = conversation.turns
        if len(turns) < 2 * int(exp.turns) + 1:
            raise DataError(f"conversation {conversation.conversation_id}: too few turns for {exp.turns} exchanges")
        history, memory_turns = turns[-2 * int(exp.turns) :], turns[: -2 * int(exp.turns)]
        texts = _memory_texts(lm, memory_turns, int(exp.memory_tokens))
        memory = new_memory()
        stored = memory.add_set("memory", texts)  # precomputed, as `load memory_type=activation` does
        cached_sequences.append(stored.token_ids)
        session = ChatSession(lm, memory, memory_messages(texts))
        for t in tqdm(range(int(exp.turns)), desc=f"dialogue {index + 1}/{len(conversations)}", unit="turn"):
            session.add("user", history[2 * t].text)
            ids = session.prompt_ids()
            _measure(lm, ids, session.prefix(ids), session.prefill, exp, tally)
            session.add("assistant", history[2 * t + 1].text)
            tracker.log(
                {"turn/prompt_tokens": len(ids), "turn/reused_tokens": tally.reused_tokens[-1]}, step=len(tally.prompts)
            )
        assert session.cache is not None  # turns and repeats are positive: the session prefilled at least once
        cache_bytes += stored.nbytes + session.cache.nbytes
        cache_tokens += len(stored) + len(session.cache)
        if int(exp.compose_memories) > 1:
            question = session.messages[-2]["content"]  # the last user message
            for name, gap in _composition_gaps(lm, texts, question, exp, new_memory()).items():
                compose_gaps.setdefault(name, []).append(gap)
    metrics = _summary(lm, tally, cached_sequences)
    metrics[f"{PREFIX}cache_mb"] = cache_bytes / 2**20
    metrics[f"{PREFIX}cache_kib_per_token"] = cache_bytes / cache_tokens / 1024
    metrics[f"{PREFIX}memory_tokens"] = float(np.mean([len(c) for c in cached_sequences]))
    metrics[f"{PREFIX}dialogues"] = len(conversations)
    metrics[f"{PREFIX}turns"] = len(tally.prompts)
    for name, values in compose_gaps.items():
        metrics[f"{PREFIX}compose/{name}"] = float(np.max(values) if "logit_diff" in name else np.mean(values))
    return metrics


def _sweep(
    lm: LanguageModel,
    conversations: list[Conversation],
    exp: KVReuseSettings,
    tracker: Tracker,
    new_memory: Callable[[], ActivationMemory],
) -> dict[str, float]:
    turns = [turn for conversation in conversations for turn in conversation.turns]  # enough text for 4k tokens
    texts = _memory_texts(lm, turns, int(exp.memory_tokens))
    question = _truncate(lm, " ".join(turn.text for turn in reversed(turns)), int(exp.question_tokens))
    memory = new_memory()
    stored = memory.add_set("memory", texts)
    tally = Tally()
    ids = lm.encode_chat([*memory_messages(texts), {"role": "user", "content": question}])
    _measure(lm, ids, memory.best_prefix(ids)[1], lambda: memory.prefill(ids), exp, tally)
    metrics = _summary(lm, tally, [stored.token_ids])
    metrics[f"{PREFIX}cache_mb"] = stored.nbytes / 2**20
    metrics[f"{PREFIX}cache_kib_per_token"] = stored.nbytes / len(stored) / 1024
    metrics[f"{PREFIX}memory_tokens"] = len(stored)
    metrics[f"{PREFIX}question_tokens"] = len(ids) - len(stored)
    tracker.log(dict(metrics.items()))
    return metrics


def _measure(
    lm: LanguageModel,
    ids: list[int],
    prefix: KVCache | None,
    reuse: Callable[[], Prefill],
    exp: KVReuseSettings,
    tally: Tally,
) -> None:
    """Time full and reused prefill alternately (the last reuse run is `reuse()`, which may keep its cache),
    then compare logits and greedy answers."""
    full_ms, reuse_ms = [], []
    for repeat in range(int(exp.repeats)):
        full, ms = _timed(lambda: prefill(lm, ids), lm.device)
        full_ms.append(ms)
        last = repeat == int(exp.repeats) - 1
        reused, ms = _timed(reuse if last else lambda: prefill(lm, ids, prefix), lm.device)
        reuse_ms.append(ms)
    tally.prompts.append(ids)
    tally.prompt_tokens.append(len(ids))
    tally.reused_tokens.append(reused.reused)
    tally.ttft_full_ms.append(float(np.median(full_ms)))
    tally.ttft_reuse_ms.append(float(np.median(reuse_ms)))
    tally.logit_diffs.append((reused.logits - full.logits).abs().max().item())
    if int(exp.max_new_tokens) > 0:
        answer_full = generate(lm, ids, None, int(exp.max_new_tokens))[0]
        answer_reused = generate(lm, ids, prefix, int(exp.max_new_tokens))[0]
        tally.greedy_matches.append(answer_full == answer_reused)


def _timed(fn: Callable[[], Prefill], device: torch.device) -> tuple[Prefill, float]:
    started = clock(device)
    result = fn()
    return result, (clock(device) - started) * 1000


def _summary(lm: LanguageModel, tally: Tally, cached: Sequence[Sequence[int]]) -> dict[str, float]:
    dims = ModelDims.from_config(lm.model.config)
    full_tokens = sum(tally.prompt_tokens)
    reuse_tokens = full_tokens - sum(tally.reused_tokens)
    ideal = perfect_prefix_reuse(tally.prompts, cached)
    full_flops = sum(prefill_flops(dims, 0, n) for n in tally.prompt_tokens)
    reuse_flops = sum(prefill_flops(dims, r, n) for r, n in zip(tally.reused_tokens, tally.prompt_tokens, strict=False))
    full_p50, reuse_p50 = float(np.median(tally.ttft_full_ms)), float(np.median(tally.ttft_reuse_ms))
    metrics = {
        "prefill_tokens_full": full_tokens,
        "prefill_tokens_reuse": reuse_tokens,
        "saved_frac": 1 - reuse_tokens / full_tokens,
        "theoretical_saved_frac": sum(ideal) / full_tokens,
        "flops_saved_frac": 1 - reuse_flops / full_flops,
        "ttft_ms_full_p50": full_p50,
        "ttft_ms_reuse_p50": reuse_p50,
        "ttft_speedup": full_p50 / reuse_p50,
        "max_logit_diff": max(tally.logit_diffs),
    }
    if tally.greedy_matches:
        metrics["greedy_match_frac"] = float(np.mean(tally.greedy_matches))
    return {PREFIX + name: float(value) for name, value in metrics.items()}


@torch.no_grad()
def _composition_gaps(
    lm: LanguageModel, texts: list[str], question: str, exp: KVReuseSettings, memory: ActivationMemory
) -> dict[str, float]:
    """Next-token gap of each composition mode to the exact prefill of the same tokens."""
    k = min(int(exp.compose_memories), len(texts))
    groups = [" ".join(texts[i::k]) for i in range(k)]  # k memories of similar length
    prompt = chunked_memory_prompt(lm, groups)
    rendered = cast(
        str,
        lm.tokenizer.apply_chat_template(
            [*memory_messages(["x"]), {"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        ),
    )
    tail = rendered.split(cast(str, lm.tokenizer.apply_chat_template(memory_messages(["x"]), tokenize=False)), 1)[1]
    ids = prompt.ids + lm.tokenizer.encode(tail, add_special_tokens=False)
    reference = prefill(lm, ids)
    chunks = encode_chunks(lm, prompt)
    end = len(prompt.header)
    for i, chunk in enumerate(prompt.chunks):  # exact mode: the set grows one memory at a time, each from the last
        end += len(chunk)
        exact = memory.add_tokens(f"set{i}", prompt.ids[:end])
    variants = {
        "exact": exact,
        "rerotate": compose_chunks(lm, prompt, chunks)[0],
        "blend": compose_chunks(lm, prompt, chunks, float(exp.recompute_frac))[0],
        "naive": compose_chunks(lm, prompt, chunks, reposition=False)[0],
    }
    gaps = {}
    for name, cache in variants.items():
        logits = prefill(lm, ids, cache).logits
        gaps[f"{name}_max_logit_diff"] = (logits - reference.logits).abs().max().item()
        gaps[f"{name}_top1_match_frac"] = float(logits.argmax() == reference.logits.argmax())
    return gaps


def _memory_texts(lm: LanguageModel, turns: Sequence[Turn], budget_tokens: int) -> list[str]:
    """One memory per turn ("speaker: text"), as many as fit in `budget_tokens`; the last one is truncated."""
    texts, used = [], 0
    for turn in turns:
        text = f"{turn.speaker}: {turn.text}"
        n = len(lm.tokenizer.encode(text, add_special_tokens=False)) + 1  # +1 for the separator
        if used + n > budget_tokens:
            rest = budget_tokens - used - 1
            if rest > 0:
                texts.append(_truncate(lm, text, rest))
            break
        texts.append(text)
        used += n
    if not texts:
        raise DataError("the dataset has no turns to build a memory from")
    if used < budget_tokens and len(texts) == len(turns):
        raise DataError(
            f"the conversation has only about {used} tokens of turns; memory_tokens={budget_tokens} needs more"
        )
    return texts


def _truncate(lm: LanguageModel, text: str, tokens: int) -> str:
    return cast(str, lm.tokenizer.decode(lm.tokenizer.encode(text, add_special_tokens=False)[:tokens]))
