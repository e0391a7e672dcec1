"""Composition strategies for activation memory, compared on one protocol (issue 21).

Every memory is cached once, alone (`encode_chunk`); a question's memories are then composed by each
strategy (conf/compose/) at each recompute fraction, and measured against a full prefill of the same prompt:
next-token KL and top-1 agreement at the first answer position, greedy answer agreement with the text form
(the same generated tokens), F1 (and J with a judge), prefill saved, TTFT and the bytes copied.

`mode=qa`: the questions and contexts of `experiment=qa` (its context builder and retrieval, reused): per
question, the text form answers first (a full prefill: the reference and the TTFT baseline), then every
strategy x fraction composes from the cached memories and answers, in an order rotated per question, so
that machine load hits all configurations alike. TTFT counts everything between the question and its
first token: composing (selection and recomputation included), the prompt's tail and the first token;
the memories' own caches are built before (once per memory, as the activation tier keeps them).

`mode=sweep`: TTFT against context length at model scale (`model=random_llama model.preset=...`): `chunks`
memories cut from the dataset's turns to `memory_tokens` tokens in all, full prefill versus each strategy,
`repeats` interleaved runs per configuration. Random weights make its fidelity numbers meaningless.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hydra.utils
import numpy as np
import torch
from hydra.errors import MissingConfigException
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.data.schema import Conversation, Turn
from memos_lab.errors import ConfigError, DataError
from memos_lab.eval.kv import next_token_kl, top1_agrees
from memos_lab.eval.qa import score_answer
from memos_lab.eval.retrieval import latency_percentiles
from memos_lab.experiments.common import ExperimentSettings, load_records
from memos_lab.experiments.qa import (
    CONTEXTS,
    JUDGE_MODES,
    ContextBuilder,
    Prepared,
    QARecord,
    QASettings,
    build_prompts,
    check_budget_words,
    context_window,
    first_line,
    judge_conversation,
    new_record,
    prepare_conversation,
    select_questions,
)
from memos_lab.generation.base import Generator
from memos_lab.loggers.base import Tracker
from memos_lab.memory.activation.base import ActivationMemory, build_activation
from memos_lab.memory.activation.compose.base import Composed, CompositionStrategy, FractionSettings
from memos_lab.memory.activation.template import chunked_memory_prompt, memory_messages
from memos_lab.models.decode import greedy, prefill
from memos_lab.models.device import clock
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import group_config, non_negative_int, one_of, positive, positive_int, uses_settings

log = logging.getLogger(__name__)

PREFIX = "compose/"
MODES = ("qa", "sweep")
TEXT = "text"  # the text form: the whole prompt prefilled (the reference and the TTFT baseline)
CONFIGURATIONS_ARTIFACT = "configurations"  # one row per strategy x fraction: what the table is made of


@dataclass(frozen=True)
class KVComposeSettings(ExperimentSettings):
    """`experiment=kv_compose`'s settings (conf/experiment/kv_compose.yaml only overrides them)."""

    mode: str = "qa"  # qa | sweep
    strategies: tuple[str, ...] = ("exact", "naive", "rerotate", "cacheblend", "leading")  # conf/compose/ files
    # Each strategy that recomputes runs at every fraction; the others once (their fraction is 0).
    recompute_fracs: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)
    max_new_tokens: int = 16  # greedy answer tokens compared with the text form's
    # mode=qa: experiment=qa's questions and contexts
    context: str = "retrieved"  # retrieved | none | full | oracle
    top_k: int = 10
    context_tokens: int = 1024  # the whole prompt's budget, as in experiment=qa
    max_questions: int | None = 1  # per conversation and category (a seeded subset); None: every question
    subset_seed: int = 0
    judge: str = "auto"  # auto | true | false, as in experiment=qa
    # mode=sweep: synthetic memories at model scale
    memory_tokens: int = 2048  # tokens of all memories together
    chunks: int = 10  # memories they are cut into
    question_tokens: int = 16
    repeats: int = 3  # timed runs per configuration, interleaved; the median counts
    kv_budget_mb: float = 2048.0  # the activation tier holding every memory's cache (least recently used evicted)

    def validate(self) -> None:
        one_of(self, "mode", MODES)
        one_of(self, "context", CONTEXTS)
        one_of(self, "judge", JUDGE_MODES)
        positive_int(self, "top_k", "context_tokens", "max_questions", "memory_tokens", "chunks", "question_tokens",
                     "repeats")  # fmt: skip
        non_negative_int(self, "max_new_tokens")
        positive(self, "kv_budget_mb")
        if not self.strategies:
            raise ConfigError("experiment.strategies is empty; name files of conf/compose/")
        for frac in self.recompute_fracs:
            if not 0.0 <= frac <= 1.0:
                raise ConfigError(f"experiment.recompute_fracs must lie within [0, 1], got {frac}")

    def qa_settings(self) -> QASettings:
        """experiment=qa's settings for the same questions and contexts (the kv form: a local model)."""
        return QASettings(
            context=self.context, form="kv", top_k=self.top_k, context_tokens=self.context_tokens,
            max_new_tokens=max(self.max_new_tokens, 1), max_questions=self.max_questions,
            subset_seed=self.subset_seed, judge=self.judge,
        )  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One strategy at one recompute fraction."""

    label: str  # the metric namespace: `cacheblend@0.15`, or `naive` for a strategy that recomputes nothing
    strategy: CompositionStrategy
    recompute_frac: float | None  # None: the strategy takes no fraction


def build_variants(settings: KVComposeSettings) -> list[Variant]:
    """Every strategy of `settings.strategies` from its conf/compose YAML, at each fraction it takes."""
    variants = []
    for name in settings.strategies:
        try:
            node = group_config("compose", name)
        except MissingConfigException:  # Hydra's message lists every search path: one line instead
            raise ConfigError(f"experiment.strategies: no strategy {name!r} in conf/compose/") from None
        base = cast(CompositionStrategy, hydra.utils.instantiate(node))
        if not issubclass(base.settings_class, FractionSettings):
            variants.append(Variant(name, base, None))
            continue
        for frac in dict.fromkeys(settings.recompute_fracs):
            strategy = cast(CompositionStrategy, hydra.utils.instantiate(node, recompute_frac=frac))
            variants.append(Variant(f"{name}@{frac:g}", strategy, frac))
    return variants


# ---- one prompt, every variant ----------------------------------------------------------------------


@dataclass
class Tally:
    """Per-variant measurements over the questions (or sweep repeats)."""

    kl_bits: list[float] = field(default_factory=list)
    top1: list[bool] = field(default_factory=list)
    answer_agrees: list[bool] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    context_tokens: int = 0
    memory_tokens: int = 0
    recomputed_tokens: int = 0
    computed_tokens: float = 0.0  # recomputed plus the selection pass, in full-depth token equivalents
    bytes_copied: list[int] = field(default_factory=list)
    records: list[QARecord] = field(default_factory=list)

    def add(self, measured: Measured, ref: Reference, answered: bool) -> None:
        """One prompt's measurements; `answered`: greedy answers were generated (max_new_tokens > 0)."""
        composed = measured.composed
        self.context_tokens += composed.context_tokens
        self.memory_tokens += measured.memory_tokens
        self.recomputed_tokens += composed.recomputed_tokens
        self.computed_tokens += composed.recomputed_tokens + composed.selection_cost
        self.bytes_copied.append(composed.bytes_copied)
        self.kl_bits.append(next_token_kl(ref.logits, measured.logits))
        self.top1.append(top1_agrees(ref.logits, measured.logits))
        if answered:
            self.answer_agrees.append(measured.answer_ids == ref.answer_ids)


@dataclass
class MemoryPrompt:
    """A prompt whose system message holds memories, each with its cache stored in the activation tier."""

    lines: list[str]
    ids: list[int]  # header + memories + footer, tokenised line by line, then the rest of the prompt
    memory_tokens: int  # the memory message less its header (shared by every prompt, kept in the tier)
    cache_bytes: int  # of the memories' own caches


def memory_prompt(activation: ActivationMemory, lines: Sequence[str], rest: Sequence[int]) -> MemoryPrompt:
    """The prompt of `lines` + `rest`, every line's cache stored in the tier beforehand (untimed: the tier
    keeps each memory's cache from when the memory was first cached)."""
    chunked = chunked_memory_prompt(activation.model, lines, activation.template)
    caches = [activation.chunk_cache(line, last=i == len(lines) - 1) for i, line in enumerate(lines)]
    memory_tokens = len(chunked.ids) - len(chunked.header)  # the memories and the message's end
    return MemoryPrompt(list(lines), [*chunked.ids, *rest], memory_tokens, sum(cache.nbytes for cache in caches))


def prompt_rest(lm: LanguageModel, system: str, user: str) -> list[int]:
    """Token ids of what follows the system message: the user message and the generation prompt (the
    system message's own rendering is cut off the whole chat's)."""
    tokenizer = lm.tokenizer
    system_only = cast(str, tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=False))
    whole = cast(
        str,
        tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=False, add_generation_prompt=True,
        ),
    )  # fmt: skip
    if not whole.startswith(system_only):
        raise ConfigError(f"the chat template of {lm.name} renders the system message differently in a longer chat")
    return list(tokenizer.encode(whole[len(system_only) :], add_special_tokens=False))


@dataclass
class Reference:
    """The full prefill of a prompt and the text form's greedy answer."""

    logits: torch.Tensor
    answer_ids: list[int]
    ttft_ms: float


def reference(lm: LanguageModel, text_ids: Sequence[int], ids: Sequence[int], max_new_tokens: int) -> Reference:
    """The text form (`text_ids` prefilled whole: its TTFT and greedy answer) and the next-token logits of
    a full prefill of the composed prompt's `ids` (the same tokens, unless piecewise tokenisation differs)."""
    started = clock(lm.device)
    if max_new_tokens:
        decoded = greedy(lm, text_ids, max_new_tokens)
        ttft_ms, answer = (decoded.first_token_at - started) * 1000, decoded.token_ids
    else:
        int(prefill(lm, text_ids).logits.argmax())  # the first token, as greedy would take it
        ttft_ms, answer = (clock(lm.device) - started) * 1000, []
    return Reference(prefill(lm, ids).logits, answer, ttft_ms)


@dataclass
class Measured:
    """One variant on one prompt."""

    composed: Composed
    memory_tokens: int
    logits: torch.Tensor  # at the first answer position
    answer_ids: list[int]
    ttft_ms: float


def measure(activation: ActivationMemory, variant: Variant, prompt: MemoryPrompt, max_new_tokens: int) -> Measured:
    """Compose in the tier, then answer greedily; TTFT runs from before composing to the first answer token.
    With no answer tokens asked, only the prompt is prefilled (the same work up to the first token)."""
    lm = activation.model
    started = clock(lm.device)
    composed = activation.compose(prompt.lines, variant.strategy)
    if max_new_tokens:
        decoded = greedy(lm, prompt.ids, max_new_tokens, composed.cache)
        ttft_ms = (decoded.first_token_at - started) * 1000
        logits, answer = prefill(lm, prompt.ids, composed.cache).logits, decoded.token_ids
    else:
        logits, answer = prefill(lm, prompt.ids, composed.cache).logits, []
        int(logits.argmax())  # the first token, as greedy would take it (synchronises a GPU too)
        ttft_ms = (clock(lm.device) - started) * 1000
    return Measured(composed, prompt.memory_tokens, logits, answer, ttft_ms)


def _round(
    activation: ActivationMemory, variants: Sequence[Variant], prompt: MemoryPrompt, text_ids: Sequence[int],
    max_new_tokens: int, turn: int,
) -> tuple[Reference, dict[str, Measured]]:  # fmt: skip
    """The text form and every variant once, in an order rotated by `turn` (load drifts hit all alike)."""
    ref, measured = None, {}
    for entry in rotated([None, *variants], turn):
        if entry is None:
            ref = reference(activation.model, text_ids, prompt.ids, max_new_tokens)
        else:
            measured[entry.label] = measure(activation, entry, prompt, max_new_tokens)
    assert ref is not None  # one of the entries
    return ref, measured


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """`items` starting at index `by` (mod its length): each question measures the variants in another order."""
    by %= max(len(items), 1)
    return [*items[by:], *items[:by]]


# ---- the run ----------------------------------------------------------------------------------------


@uses_settings(KVComposeSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    settings = KVComposeSettings.from_mapping(cfg.experiment)
    variants = build_variants(settings)  # an unknown strategy or a bad fraction fails before any model loads
    return (_sweep if settings.mode == "sweep" else _qa)(cfg, settings, variants, tracker)


def _qa(cfg: DictConfig, settings: KVComposeSettings, variants: list[Variant], tracker: Tracker) -> dict[str, float]:
    qa_settings = settings.qa_settings()
    answer_prompt, judge_prompt = build_prompts(cfg)
    check_budget_words(answer_prompt, qa_settings)
    configured_judge = bool(cfg.judge.get("_target_"))
    if settings.judge == "true" and not configured_judge:
        raise ConfigError("experiment.judge=true but no judge is configured (judge=openai_compatible ...)")
    conversations = load_records(cfg, Conversation)
    generator: Generator = hydra.utils.instantiate(cfg.llm)
    lm = generator.require_weights("experiment=kv_compose")
    for variant in variants:
        variant.strategy.check(lm)
    builder = ContextBuilder(qa_settings, answer_prompt, generator.count_tokens, context_window(generator, qa_settings))
    embedder = hydra.utils.instantiate(cfg.embedder) if settings.context == "retrieved" else None
    reader = hydra.utils.instantiate(cfg.reader) if settings.context == "retrieved" else None
    judge = (
        hydra.utils.instantiate(cfg.judge, prompt=judge_prompt.user)
        if configured_judge and settings.judge != "false"
        else None
    )

    activation = build_activation(cfg.activation, lm, template=answer_prompt.system, budget_mb=settings.kv_budget_mb)
    tallies = {label: Tally() for label in [TEXT, *(v.label for v in variants)]}
    prompt_tokens, same_tokens, cache_bytes = [], [], []
    asked = 0
    memory_counters: Counter[str] = Counter()  # failures a backend counted instead of raising
    for step, conversation in enumerate(tqdm(conversations, desc="conversations", unit="conv")):
        questions = select_questions(conversation, settings.max_questions, settings.subset_seed)
        if not questions:
            continue
        prepared = prepare_conversation(
            conversation, questions, qa_settings, builder, cfg, embedder, reader, memory_counters
        )
        by_label: dict[str, list[QARecord]] = {label: [] for label in tallies}
        for item in prepared:
            lines = answer_prompt.memory_block(item.lines)
            messages = answer_prompt.messages(item.lines, item.question.question)
            text_ids = lm.encode_chat(messages)
            prompt = memory_prompt(activation, lines, prompt_rest(lm, messages[0]["content"], messages[1]["content"]))
            prompt_tokens.append(len(prompt.ids))
            same_tokens.append(prompt.ids == text_ids)
            cache_bytes.append(prompt.cache_bytes)
            ref, measured = _round(activation, variants, prompt, text_ids, settings.max_new_tokens, asked)
            tallies[TEXT].ttft_ms.append(ref.ttft_ms)
            by_label[TEXT].append(_record(lm, item, ref.answer_ids))
            for label, result in measured.items():
                tallies[label].ttft_ms.append(result.ttft_ms)
                tallies[label].add(result, ref, settings.max_new_tokens > 0)
                by_label[label].append(_record(lm, item, result.answer_ids))
            asked += 1
        if judge is not None:
            for records in by_label.values():
                judge_conversation(records, prepared, judge, judge_prompt)
        for label, records in by_label.items():
            tallies[label].records += records
        tracker.log({"progress/questions": asked}, step=step)
    generator.close()
    if not asked:
        raise DataError("no question was asked: the dataset or experiment.max_questions selects none")

    rows = [_row(label, variant, tallies[label], tallies[TEXT]) for label, variant in
            [(TEXT, None), *((v.label, v) for v in variants)]]  # fmt: skip
    tracker.log_artifact(CONFIGURATIONS_ARTIFACT, {"rows": rows})
    metrics = _flat(rows)
    metrics[f"{PREFIX}questions"] = float(asked)
    metrics[f"{PREFIX}prompt_tokens_mean"] = float(np.mean(prompt_tokens))
    metrics[f"{PREFIX}context_tokens_mean"] = tallies[variants[0].label].context_tokens / asked
    metrics[f"{PREFIX}same_tokens_frac"] = float(np.mean(same_tokens))
    metrics[f"{PREFIX}cache_mb_mean"] = float(np.mean(cache_bytes)) / 2**20
    metrics.update({f"memory/{name}": count for name, count in sorted(memory_counters.items())})
    return metrics


def _record(lm: LanguageModel, item: Prepared, answer_ids: Sequence[int]) -> QARecord:
    record = new_record(item)
    record.answer = first_line(cast(str, lm.tokenizer.decode(list(answer_ids), skip_special_tokens=True)))
    score = score_answer(record.answer, item.question.answer, item.question.category)
    record.f1, record.em, record.bleu1 = score.f1, score.em, score.bleu1
    return record


def _row(label: str, variant: Variant | None, tally: Tally, text: Tally) -> dict[str, Any]:
    """One configuration's numbers (floats are metrics; the rest describes it)."""
    row: dict[str, Any] = {
        "label": label,
        "strategy": variant.strategy.name if variant else TEXT,
        "recompute_frac": variant.recompute_frac if variant else None,
    }
    answerable = [r for r in tally.records if r.answerable]
    if answerable:
        row["f1"] = float(np.mean([r.f1 for r in answerable if r.f1 is not None]))
        verdicts = [float(r.verdict) for r in answerable if r.verdict is not None]
        if verdicts:
            row["j"] = float(np.mean(verdicts))
    row.update(latency_percentiles(tally.ttft_ms, "ttft_ms"))
    if variant is None:
        return row
    row["kl_bits_mean"] = float(np.mean(tally.kl_bits))
    row["kl_bits_max"] = float(np.max(tally.kl_bits))
    row["top1_agreement"] = float(np.mean(tally.top1))
    if tally.answer_agrees:
        row["answer_agreement"] = float(np.mean(tally.answer_agrees))
    row["recomputed_frac"] = tally.recomputed_tokens / tally.context_tokens
    row["prefill_saved_frac"] = 1 - tally.recomputed_tokens / tally.context_tokens
    # The header is the same for every prompt and always reused: the share of the memories themselves.
    row["memory_saved_frac"] = 1 - tally.recomputed_tokens / tally.memory_tokens
    row["compute_saved_frac"] = 1 - tally.computed_tokens / tally.context_tokens
    row["bytes_copied_mean"] = float(np.mean(tally.bytes_copied))
    row["ttft_speedup"] = float(np.median(text.ttft_ms) / np.median(tally.ttft_ms))  # over the text form
    return row


# ---- mode=sweep: TTFT against context length at model scale ----------------------------------------


def memory_texts(lm: LanguageModel, turns: Sequence[Turn], chunks: int, tokens: int) -> list[str]:
    """`chunks` memories of about `tokens / chunks` tokens each, cut from the turns' text in order."""
    each = max(tokens // chunks, 1)
    words = iter(" ".join(f"{turn.speaker}: {turn.text}" for turn in turns).split())
    texts = []
    for _ in range(chunks):
        ids: list[int] = []
        for word in words:
            ids += lm.tokenizer.encode(" " + word, add_special_tokens=False)
            if len(ids) >= each:
                break
        if len(ids) < each:
            raise DataError(f"the dataset's turns hold fewer than {tokens} tokens of text for memory_tokens={tokens}")
        texts.append(cast(str, lm.tokenizer.decode(ids[:each])).strip())
    return texts


def _sweep(cfg: DictConfig, settings: KVComposeSettings, variants: list[Variant], tracker: Tracker) -> dict[str, float]:
    """One prompt of `chunks` memories, `repeats` interleaved rounds of the full prefill and every variant."""
    conversations = load_records(cfg, Conversation)
    lm: LanguageModel = hydra.utils.instantiate(cfg.model)
    for variant in variants:
        variant.strategy.check(lm)
    turns = [turn for conversation in conversations for turn in conversation.turns]
    texts = memory_texts(lm, turns, settings.chunks, settings.memory_tokens)
    question = memory_texts(lm, list(reversed(turns)), 1, settings.question_tokens)[0]
    activation = build_activation(cfg.activation, lm, budget_mb=settings.kv_budget_mb)
    system = memory_messages(texts, activation.template)[0]["content"]
    prompt = memory_prompt(activation, texts, prompt_rest(lm, system, question))
    tallies = {label: Tally() for label in [TEXT, *(v.label for v in variants)]}
    for repeat in tqdm(range(settings.repeats), desc="repeats", unit="repeat"):
        ref, measured = _round(activation, variants, prompt, prompt.ids, settings.max_new_tokens, repeat)
        tallies[TEXT].ttft_ms.append(ref.ttft_ms)
        for label, result in measured.items():
            tallies[label].ttft_ms.append(result.ttft_ms)
            if repeat == 0:  # the same computation every round: fidelity and accounting once
                tallies[label].add(result, ref, settings.max_new_tokens > 0)
    metrics = {
        f"{PREFIX}context_tokens_mean": tallies[variants[0].label].context_tokens,
        f"{PREFIX}prompt_tokens_mean": float(len(prompt.ids)),
        f"{PREFIX}cache_mb_mean": prompt.cache_bytes / 2**20,
    }
    rows = [_row(label, variant, tallies[label], tallies[TEXT]) for label, variant in
            [(TEXT, None), *((v.label, v) for v in variants)]]  # fmt: skip
    tracker.log_artifact(CONFIGURATIONS_ARTIFACT, {"rows": rows})
    metrics.update(_flat(rows))
    tracker.log(dict(metrics))
    return metrics


def _flat(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The rows' numbers as metrics: `compose/<label>/<name>`."""
    return {f"{PREFIX}{row['label']}/{name}": value for row in rows for name, value in row.items()
            if isinstance(value, float)}  # fmt: skip
