"""The answer-level QA protocol (LoCoMo / LongMemEval style), for every backend, baseline and memory form.

Per conversation: every session goes into the conversation's cube (`memory=`, `reader=`); per question,
`experiment.context` chooses what the answerer sees, always as dated lines within a token budget:
- `retrieved`: the `top_k` memories the cube returns, packed by rank into `experiment.context_tokens`;
- `none`: nothing (the no-memory baseline);
- `full`: the whole conversation, cut from the oldest end to the model's context window;
- `oracle`: only the gold evidence turns (an upper bound for the answerer; the one place gold evidence is
  read at question time).
`experiment.form` chooses how the context reaches the model: `text` (in the prompt), `kv` (the same
prompt, its system message's KV cache composed in the activation memory from each memory's own cache by
the `compose=` strategy: with `exact`, the default, the same answers with less prefill) or `parametric`
(the conversation recited into a LoRA adapter, nothing in the prompt).
Answers are scored with token F1, BLEU-1, exact match and, with a judge, judge accuracy (J).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, cast

import hydra.utils
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from memos_lab.data.schema import NO_EVIDENCE_CATEGORIES, Conversation, Question, Turn
from memos_lab.errors import ConfigError, DataError, MemosError
from memos_lab.eval.judge import LLMJudge
from memos_lab.eval.qa import score_answer
from memos_lab.eval.retrieval import latency_percentiles
from memos_lab.eval.stats import bootstrap_ci
from memos_lab.experiments.common import PER_QUERY_ARTIFACT, ExperimentSettings, load_records, require_local_mos
from memos_lab.experiments.retrieval import turn_scores
from memos_lab.generation.base import ChatRequest, Generation, Generator
from memos_lab.loggers.base import Tracker
from memos_lab.memory.activation.base import ActivationMemory, build_activation
from memos_lab.memory.activation.compose.base import Composed, CompositionStrategy
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.memory.reader import Reader, spoken_date, turn_item
from memos_lab.models.decode import KVCache, greedy
from memos_lab.models.device import clock
from memos_lab.models.embedder import Embedder
from memos_lab.models.llm import LanguageModel
from memos_lab.mos import MOS
from memos_lab.prompts import AnswerPrompt, JudgePrompt
from memos_lab.scheduler.parametric import recitation_edit
from memos_lab.settings import one_of, positive, positive_int, uses_settings

log = logging.getLogger(__name__)

CONTEXTS = ("retrieved", "none", "full", "oracle")
FORMS = ("text", "kv", "parametric")
JUDGE_MODES = ("auto", "true", "false")
ANSWERS_ARTIFACT = "answers"  # every question with its answer, verdict and context: for people and paired tests
SETUP_ARTIFACT = "qa_setup"  # prompts, models and the category map the numbers were made with
SCORES = ("j", "f1", "bleu1", "em")


@dataclass
class Prepared:
    """One question with the context it will be answered from."""

    question: Question
    conversation_id: str
    lines: list[str]  # dated context lines, oldest first
    shown_turns: tuple[str, ...]  # turn ids behind the lines
    retrieved: tuple[str, ...] | None = None  # retrieved mode: turn ids of the top_k hits, best first
    evidence: tuple[str, ...] = ()  # gold evidence turns that exist in the conversation
    truncated: bool = False  # full mode: the conversation did not fit
    retrieve_ms: float = 0.0


@dataclass
class QARecord:
    """The per-question artefact row (answers.json) and the source of every metric."""

    question_id: str
    conversation_id: str
    category: str
    category_id: int | None
    question: str
    gold: str
    answer: str | None = None
    verdict: bool | None = None  # the judge's; None when not judged or the judge failed
    f1: float | None = None
    bleu1: float | None = None
    em: float | None = None
    answer_error: str | None = None
    judge_error: str | None = None
    retrieved: list[str] = field(default_factory=list)
    shown_turns: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    recall_all: bool | None = None  # all evidence among the top_k retrieved (retrieved mode)
    evidence_shown: bool | None = None  # all evidence in the context the answerer saw
    truncated: bool = False
    context_tokens: int = 0
    prompt_tokens: int = 0
    ttft_ms: float | None = None
    answer_ms: float | None = None

    @property
    def answerable(self) -> bool:
        return self.category not in NO_EVIDENCE_CATEGORIES


# ---- settings checked before anything loads -------------------------------------------------------


@dataclass(frozen=True)
class QASettings(ExperimentSettings):
    """`experiment=qa`'s settings (conf/experiment/qa.yaml only overrides them)."""

    declared_in_yaml: ClassVar[tuple[str, ...]] = (*ExperimentSettings.declared_in_yaml, "ci_metrics", "pinned")
    ci_metrics: tuple[str, ...] = ()  # per-question scores `report` turns into bootstrap 95% CIs
    pinned: tuple[str, ...] = ()  # settings that must be equal for runs to share a table
    context: str = "retrieved"  # retrieved | none | full | oracle
    form: str = "text"  # text | kv | parametric
    top_k: int = 10
    context_tokens: int = 1024  # the whole prompt's budget (instructions + memories + question)
    full_context_tokens: int | None = None  # context=full; None: the model's window minus max_new_tokens
    max_new_tokens: int = 24
    max_questions: int | None = None  # per conversation and category; None: every question
    subset_seed: int = 0
    judge: str = "auto"  # auto | true | false
    include_unanswerable: bool = False
    kv_budget_mb: float = 512.0
    bootstrap_resamples: int = 2000

    def validate(self) -> None:
        one_of(self, "context", CONTEXTS)
        one_of(self, "form", FORMS)
        one_of(self, "judge", JUDGE_MODES)
        positive_int(self, "top_k", "context_tokens", "full_context_tokens", "max_new_tokens", "max_questions",
                     "bootstrap_resamples")  # fmt: skip
        positive(self, "kv_budget_mb")

    @classmethod
    def from_config(cls, exp: Mapping[str, Any]) -> QASettings:
        values: dict[str, Any] = (
            cast(dict[str, Any], OmegaConf.to_container(exp, resolve=True))
            if isinstance(exp, DictConfig)
            else dict(exp)
        )
        if "judge" in values:  # `experiment.judge=true` on the command line is a YAML boolean ("True")
            values["judge"] = str(values["judge"]).lower()
        return cls.from_mapping(values)


def build_prompts(cfg: DictConfig) -> tuple[AnswerPrompt, JudgePrompt]:
    prompts: list[AnswerPrompt | JudgePrompt] = []
    for kind, cls in (("answer", AnswerPrompt), ("judge", JudgePrompt)):
        node = cfg.prompt.get(kind)
        if node is None:
            raise ConfigError(f"prompt.{kind} is not set; choose a file from conf/prompt/ (e.g. {kind}_v1)")
        values = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))  # a prompt file is a mapping
        try:
            prompts.append(cls(**values))
        except TypeError as error:  # a misspelt or missing key in the prompt file
            raise ConfigError(f"prompt.{kind}: {error}; the file holds {sorted(values)}") from None
    answer, judge = prompts
    assert isinstance(answer, AnswerPrompt) and isinstance(judge, JudgePrompt)  # built in that order above
    return answer, judge


def check_budget_words(prompt: AnswerPrompt, settings: QASettings) -> None:
    """Before the model loads: every word of the empty prompt is at least one token, so a budget below the
    word count can never hold it (the exact check follows once the tokenizer is there)."""
    words = len(" ".join(m["content"] for m in prompt.messages([], "")).split())
    if settings.context != "full" and settings.context_tokens < words:
        raise ConfigError(
            f"experiment.context_tokens={settings.context_tokens} is smaller than the answer prompt "
            f"{prompt.version} itself (at least {words} tokens before any memory or question)"
        )


def select_questions(conversation: Conversation, per_group: int | None, seed: int) -> list[Question]:
    """At most `per_group` questions per category of the conversation, a seeded sample in dataset order."""
    if per_group is None:
        return list(conversation.questions)
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, question in enumerate(conversation.questions):
        by_category[question.category].append(index)
    chosen: set[int] = set()
    for category, indices in by_category.items():
        rng = random.Random(f"{seed}/{conversation.conversation_id}/{category}")  # str seeds are stable
        chosen.update(rng.sample(indices, min(per_group, len(indices))))
    return [question for index, question in enumerate(conversation.questions) if index in chosen]


def check_answers(conversations: Sequence[Conversation]) -> None:
    for conversation in conversations:
        for question in conversation.questions:
            if question.answerable and not str(question.answer or "").strip():
                raise DataError(
                    f"question {question.question_id} has no gold answer: the QA protocol needs a dataset with answers"
                )


# ---- context assembly ---------------------------------------------------------------------------


def context_line(text: str, time: str | None) -> str:
    return f"[{spoken_date(time)}] {text}" if time else text


def turn_line(turn: Turn) -> str:
    return context_line(f"{turn.speaker}: {turn.text}", turn.time)


def pack(candidates: Sequence[int], cost: Sequence[int], budget: int) -> list[int]:
    """Indices of `candidates` taken in order while their costs fit the budget (one that does not is skipped)."""
    taken, used = [], 0
    for index in candidates:
        if used + cost[index] <= budget:
            taken.append(index)
            used += cost[index]
    return taken


def newest_that_fit(cost: Sequence[int], budget: int) -> int:
    """The first index from which the items to the end fit the budget (cutting from the oldest end)."""
    used = 0
    for index in range(len(cost) - 1, -1, -1):
        used += cost[index]
        if used > budget:
            return index + 1
    return 0


class ContextBuilder:
    """Turns a question into its dated context lines, within the token budget of its mode."""

    def __init__(
        self, settings: QASettings, prompt: AnswerPrompt, count: Callable[[str], int], window: int | None
    ) -> None:
        self.settings = settings
        self.prompt = prompt
        self.count = count  # tokens of a piece of text (the answerer's tokenizer; an estimate when served)
        self.window = window  # the answerer's context length in tokens (None: served, unknown)
        self._cost: dict[str, int] = {}

    def cost(self, line: str) -> int:
        if line not in self._cost:
            self._cost[line] = self.count(line + "\n")
        return self._cost[line]

    def fixed_tokens(self, question: str) -> int:
        """Tokens of the prompt with no memories: instructions, chat markup and the question."""
        return self.count("".join(m["content"] for m in self.prompt.messages([], question))) + 16  # markup slack

    def budget(self, question: str) -> int:
        total = self.full_budget() if self.settings.context == "full" else self.settings.context_tokens
        left = total - self.fixed_tokens(question)
        if left < 0:
            raise ConfigError(
                f"experiment.{'full_context_tokens' if self.settings.context == 'full' else 'context_tokens'}="
                f"{total} is smaller than the answer prompt {self.prompt.version} with question "
                f"{question[:40]!r} ({self.fixed_tokens(question)} tokens)"
            )
        return left

    def full_budget(self) -> int:
        if self.settings.full_context_tokens:
            return self.settings.full_context_tokens
        assert self.window is not None  # context_window refuses context=full with neither a window nor this setting
        return self.window - self.settings.max_new_tokens

    def full(self, conversation: Conversation, questions: Sequence[Question]) -> tuple[list[Turn], bool]:
        """The conversation's newest turns that fit beside its longest question: one context for all its
        questions, so the kv form reuses one cache across them."""
        turns = conversation.turns
        longest = max((q.question for q in questions), key=self.count, default="")
        start = newest_that_fit([self.cost(turn_line(t)) for t in turns], self.budget(longest))
        return turns[start:], start > 0

    def ranked(self, lines: Sequence[str], question: str) -> list[int]:
        """Which of the ranked `lines` fit the budget, best first."""
        return pack(range(len(lines)), [self.cost(line) for line in lines], self.budget(question))


# ---- the answerer and the judge (the generation seam) ---------------------------------------------


def answer_from_prefix(model: LanguageModel, messages: list[dict[str, str]], prefix: KVCache, max_new_tokens: int,
                       request_id: str, started: float | None = None) -> Generation:  # fmt: skip
    """The kv form: a greedy answer that reuses the memory prefix's cache (one question at a time); its
    latency and TTFT count from `started` (default: now), e.g. from before the prefix was composed."""
    prompt_ids = model.encode_chat(messages)
    started = clock(model.device) if started is None else started
    try:
        decoded = greedy(model, prompt_ids, max_new_tokens, prefix)
    except MemosError as error:  # e.g. a prompt longer than the model takes: this question fails
        return Generation.failure(str(error), request_id)
    return Generation(
        text=cast(str, model.tokenizer.decode(decoded.token_ids, skip_special_tokens=True)),
        prompt_tokens=len(prompt_ids),
        completion_tokens=len(decoded.token_ids),
        latency_ms=(clock(model.device) - started) * 1000,
        ttft_ms=(decoded.first_token_at - started) * 1000,
        token_ids=tuple(decoded.token_ids),
        request_id=request_id,
    )


# ---- the run -------------------------------------------------------------------------------------


@uses_settings(QASettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = cfg.experiment
    require_local_mos(cfg, "it reads its cubes' own counters (memory extraction), which stay in the server")
    settings = QASettings.from_config(exp)
    answer_prompt, judge_prompt = build_prompts(cfg)
    check_budget_words(answer_prompt, settings)
    configured_judge = bool(cfg.judge.get("_target_"))
    if settings.judge == "true" and not configured_judge:
        raise ConfigError(
            "experiment.judge=true but no judge is configured; add judge=openai_compatible "
            "judge.generator.base_url=URL judge.generator.model=NAME (or experiment.judge=auto to score without one)"
        )
    conversations = load_records(cfg, Conversation)
    check_answers(conversations)
    asked = {
        c.conversation_id: select_questions(c, settings.max_questions, settings.subset_seed) for c in conversations
    }
    generator: Generator = hydra.utils.instantiate(cfg.llm)
    model = generator.require_weights(f"experiment.form={settings.form}") if settings.form != "text" else None
    window = context_window(generator, settings)
    judge = None
    if configured_judge and settings.judge != "false":
        judge = hydra.utils.instantiate(cfg.judge, prompt=judge_prompt.user)
    embedder = hydra.utils.instantiate(cfg.embedder) if settings.context == "retrieved" else None
    reader = hydra.utils.instantiate(cfg.reader) if settings.context == "retrieved" else None
    builder = ContextBuilder(settings, answer_prompt, generator.count_tokens, window)
    kv = None
    if settings.form == "kv":
        assert model is not None  # required above for every form but text
        strategy: CompositionStrategy = hydra.utils.instantiate(cfg.compose)
        strategy.check(model)
        activation = build_activation(
            cfg.activation, model, template=answer_prompt.system, budget_mb=settings.kv_budget_mb
        )
        kv = KVForm(activation, strategy)
    tracker.log_artifact(SETUP_ARTIFACT, setup_record(generator, judge, answer_prompt, judge_prompt, conversations))

    records: list[QARecord] = []
    timing = Timing()
    memory_counters: Counter[str] = Counter()  # failures a backend counted instead of raising (peer extraction)
    for step, conversation in enumerate(tqdm(conversations, desc="conversations", unit="conv")):
        questions = asked[conversation.conversation_id]
        if not questions:
            continue
        prepared = prepare_conversation(
            conversation, questions, settings, builder, cfg, embedder, reader, memory_counters
        )
        parametric = None
        if settings.form == "parametric":
            assert model is not None  # required above for every form but text
            started = time.perf_counter()
            parametric = write_parametric(cfg, model, conversation)
            timing.train_s += time.perf_counter() - started
        answered = answer_conversation(prepared, settings, answer_prompt, generator, kv, parametric, timing)
        if judge is not None:
            judge_conversation(answered, prepared, judge, judge_prompt)
        records += answered
        if parametric is not None:
            parametric.close()  # its adapter leaves the shared model with its conversation
        tracker.log({"progress/questions": len(records)}, step=step)
    generator.close()

    tracker.log_artifact(ANSWERS_ARTIFACT, {"questions": [asdict(record) for record in records]})
    tracker.log_artifact(PER_QUERY_ARTIFACT, per_query(records, settings.include_unanswerable, settings.top_k))
    metrics = aggregate(records, settings)
    answered_count = sum(record.answer is not None for record in records)
    metrics["qa/answers_per_s"] = answered_count / timing.generate_s if timing.generate_s else 0.0
    if timing.kv_build_ms:
        metrics["latency/kv_build_ms_mean"] = float(np.mean(timing.kv_build_ms))
    if kv is not None:
        metrics.update(kv.metrics())
    if settings.form == "parametric":
        metrics["qa/parametric_train_s"] = timing.train_s
    if judge is not None:
        metrics["qa/judge_prompt_tokens"] = judge.prompt_tokens
    metrics.update({f"memory/{name}": count for name, count in sorted(memory_counters.items())})
    return metrics


def context_window(generator: Generator, settings: QASettings) -> int | None:
    """The answerer's context length where it is known (a local model), checked against the budgets."""
    model = generator.language_model
    window = getattr(model.model.config, "max_position_embeddings", None) if model is not None else None
    if settings.context == "full" and window is None and settings.full_context_tokens is None:
        raise ConfigError(
            "experiment.context=full with a served model needs experiment.full_context_tokens (its context length)"
        )
    if window is not None and settings.context != "full" and settings.context_tokens + settings.max_new_tokens > window:
        raise ConfigError(
            f"experiment.context_tokens + max_new_tokens = {settings.context_tokens + settings.max_new_tokens} "
            f"exceeds the context of {generator.name} ({window} tokens)"
        )
    return window


@dataclass
class Timing:
    generate_s: float = 0.0  # wall time inside the answerer (all batches)
    train_s: float = 0.0  # parametric form: writing the conversations into adapters
    kv_build_ms: list[float] = field(default_factory=list)  # kv form: composing each question's memory prefix


@dataclass
class KVForm:
    """The kv form: the activation tier, how it composes a context from per-memory caches, and what that cost."""

    activation: ActivationMemory
    strategy: CompositionStrategy
    context_tokens: int = 0  # of the memory prefixes, over the questions
    recomputed_tokens: int = 0  # computed fresh in context by the strategy
    encoded_tokens: int = 0  # memories seen for the first time, encoded alone into their own caches
    bytes_copied: list[int] = field(default_factory=list)  # per question, from stored caches into the composed one

    def memory_cache(self, lines: list[str]) -> KVCache:
        """The system message's cache for `lines`: stored from an earlier question with the same memories
        (the tier reuses an approximate composition only whole), else composed from the memories' own caches."""
        spec = f"{self.strategy.describe()}\n" + "\n".join(lines)
        key = "set:" + hashlib.sha256(spec.encode("utf-8")).hexdigest()[:24]
        if key in self.activation.keys():
            cache = self.activation.get(key)
            self.count(Composed(cache, len(cache), 0, 0))
            return cache
        composed = self.activation.compose(lines, self.strategy, key=key)
        self.count(composed)
        return composed.cache

    def count(self, composed: Composed) -> None:
        self.context_tokens += composed.context_tokens
        self.recomputed_tokens += composed.recomputed_tokens
        self.encoded_tokens += composed.encoded_tokens
        self.bytes_copied.append(composed.bytes_copied)

    def metrics(self) -> dict[str, float]:
        context = max(self.context_tokens, 1)
        return {
            "kv/prefill_saved_frac": 1 - self.recomputed_tokens / context,
            "kv/recomputed_frac": self.recomputed_tokens / context,
            "kv/encoded_frac": self.encoded_tokens / context,
            "kv/bytes_copied_mean": float(np.mean(self.bytes_copied)) if self.bytes_copied else 0.0,
        }


def answer_conversation(
    prepared: Sequence[Prepared], settings: QASettings, prompt: AnswerPrompt, generator: Generator,
    kv: KVForm | None, parametric: ParametricMemory | None, timing: Timing,
) -> list[QARecord]:  # fmt: skip
    """Answer a conversation's questions: all in one call for the text and parametric forms (the generator
    batches them, or sends them concurrently), one by one from the composed memory prefix for the kv form
    (its TTFT counts the composition). A question the answerer fails on is a counted failure."""
    shown = [[] if settings.form == "parametric" else item.lines for item in prepared]
    messages = [prompt.messages(lines, item.question.question) for lines, item in zip(shown, prepared, strict=False)]
    if kv is not None:
        generations = []
        model = kv.activation.model
        for lines, message, item in zip(shown, messages, prepared, strict=False):
            started = clock(model.device)
            prefix = kv.memory_cache(prompt.memory_block(lines))
            timing.kv_build_ms.append((clock(model.device) - started) * 1000)
            generation = answer_from_prefix(
                model, message, prefix, settings.max_new_tokens, item.question.question_id, started
            )  # fmt: skip
            timing.generate_s += generation.latency_ms / 1000
            generations.append(generation)
    else:
        requests = [
            ChatRequest.of(message, item.question.question_id)
            for message, item in zip(messages, prepared, strict=False)
        ]
        started = time.perf_counter()
        with parametric.applied() if parametric is not None else nullcontext():
            generations = generator.generate(requests, settings.max_new_tokens)
        timing.generate_s += time.perf_counter() - started
    records = []
    for item, message, generation in zip(prepared, messages, generations, strict=True):
        record = new_record(item)
        record.context_tokens = generator.count_tokens(message[0]["content"])
        if generation.failed:
            log.warning("answerer failed on %s: %s", item.question.question_id, generation.error)
            record.answer_error = generation.error
        else:
            record.answer = first_line(generation.text)
            record.prompt_tokens = generation.prompt_tokens
            record.ttft_ms = generation.ttft_ms
            record.answer_ms = item.retrieve_ms + generation.latency_ms
            score = score_answer(record.answer, item.question.answer, item.question.category)
            record.f1, record.em, record.bleu1 = score.f1, score.em, score.bleu1
        records.append(record)
    return records


def judge_conversation(
    records: Sequence[QARecord], prepared: Sequence[Prepared], judge: LLMJudge, prompt: JudgePrompt
) -> None:
    """Verdicts for the answered questions, asked together; a question the judge gives no verdict for is a
    counted failure, never right or wrong. Unanswerable questions are judged against `unanswerable_gold`."""
    judged = [(r, item) for r, item in zip(records, prepared, strict=True) if r.answer is not None]
    items = [
        (item.question.question, item.question.answer if item.question.answerable else prompt.unanswerable_gold, r.answer)
        for r, item in judged
        if r.answer is not None  # all of them (judged holds answered records only); narrows the type
    ]  # fmt: skip
    for (record, _), verdict in zip(judged, judge.judge_many(items) if items else [], strict=True):
        if verdict is None:
            record.judge_error = "the judge gave no verdict (failed, or answered neither CORRECT nor WRONG)"
        else:
            record.verdict = verdict


def first_line(text: str) -> str:
    """The answer proper: small models run on past it into new lines."""
    return text.strip().split("\n")[0].strip()


def prepare_conversation(
    conversation: Conversation, questions: Sequence[Question], settings: QASettings, builder: ContextBuilder,
    cfg: DictConfig, embedder: Embedder | None, reader: Reader | None, memory_counters: Counter[str],
) -> list[Prepared]:  # fmt: skip
    turns = {turn.turn_id: turn for turn in conversation.turns}

    def existing(question: Question) -> tuple[str, ...]:
        return tuple(t for t in question.evidence if t in turns) if question.answerable else ()

    if settings.context == "none":
        return [Prepared(q, conversation.conversation_id, [], (), evidence=existing(q)) for q in questions]
    if settings.context == "oracle":  # gold evidence is read here and nowhere else
        prepared = []
        for question in questions:
            evidence = [turns[t] for t in sorted(existing(question), key=list(turns).index)]
            lines = [turn_line(t) for t in evidence]
            keep = builder.ranked(lines, question.question)
            shown = [evidence[i] for i in sorted(keep)]
            prepared.append(Prepared(question, conversation.conversation_id, [turn_line(t) for t in shown],
                                     tuple(t.turn_id for t in shown), evidence=existing(question)))  # fmt: skip
        return prepared
    if settings.context == "full":
        shown, truncated = builder.full(conversation, questions)
        lines, ids = [turn_line(t) for t in shown], tuple(t.turn_id for t in shown)
        return [Prepared(q, conversation.conversation_id, lines, ids, evidence=existing(q), truncated=truncated)
                for q in questions]  # fmt: skip
    return retrieve(conversation, questions, settings, builder, cfg, embedder, reader, existing, memory_counters)


def retrieve(
    conversation: Conversation, questions: Sequence[Question], settings: QASettings, builder: ContextBuilder,
    cfg: DictConfig, embedder: Embedder | None, reader: Reader | None, existing: Callable[[Question], tuple[str, ...]],
    memory_counters: Counter[str],
) -> list[Prepared]:  # fmt: skip
    """Ingest the conversation into its own cube, then search it once per question."""
    user = conversation.conversation_id
    mos = MOS(textual_memory_factory=lambda: hydra.utils.instantiate(cfg.memory, embedder=embedder))
    mos.register_user(user)
    cube = mos.create_cube(user, cube_id=conversation.conversation_id)
    assert reader is not None  # run() instantiates one for context=retrieved, the only context that retrieves
    mos.add(user, cube.cube_id, reader.read(conversation, user))
    memory_counters.update(cube.text.counters())
    prepared = []
    for question in questions:
        started = time.perf_counter()
        hits = mos.search(user, question.question, top_k=settings.top_k, cube_ids=[cube.cube_id])
        lines = [context_line(hit.item.text, hit.item.metadata.event_time) for hit in hits]
        keep = builder.ranked(lines, question.question)
        retrieve_ms = (time.perf_counter() - started) * 1000
        # Shown oldest first, so that dates read in order; ties keep the rank order.
        keep.sort(key=lambda i: (hits[i].item.metadata.event_time or "", i))
        shown = [turn for i in keep for turn in turn_scores([hits[i]])]
        # A memory that returns memories of its own (mem0's extraction) has no evidence ids: nothing to score.
        scored = cube.text.returns_stored_items
        prepared.append(Prepared(
            question, conversation.conversation_id, [lines[i] for i in keep], tuple(shown),
            retrieved=tuple(turn_scores(hits)) if scored else None, evidence=existing(question) if scored else (),
            retrieve_ms=retrieve_ms,
        ))  # fmt: skip
    return prepared


def write_parametric(cfg: DictConfig, model: LanguageModel, conversation: Conversation) -> ParametricMemory:
    """A LoRA memory holding the conversation: each turn recited (first half -> rest) into the adapter."""
    memory = hydra.utils.instantiate(cfg.parametric, _partial_=True)(model=model)
    user = conversation.conversation_id
    edits, seen = [], set()
    for turn in conversation.turns:
        edit = recitation_edit(turn_item(conversation, turn, user))
        if edit is not None and " ".join(edit.prompt.split()).casefold() not in seen:
            seen.add(" ".join(edit.prompt.split()).casefold())
            edits.append(edit)
    if not edits:
        raise DataError(f"conversation {user}: no turn is long enough to write into a parametric memory")
    memory.edit(edits)
    return memory


def new_record(item: Prepared) -> QARecord:
    question = item.question
    record = QARecord(
        question_id=question.question_id, conversation_id=item.conversation_id, category=question.category,
        category_id=question.category_id, question=question.question, gold=question.answer,
        retrieved=list(item.retrieved or ()), shown_turns=list(item.shown_turns), evidence=list(item.evidence),
        truncated=item.truncated,
    )  # fmt: skip
    if item.evidence:
        shown = set(item.shown_turns)
        record.evidence_shown = all(t in shown for t in item.evidence)
        if item.retrieved is not None:
            found = set(item.retrieved)
            record.recall_all = all(t in found for t in item.evidence)
    return record


def setup_record(generator: Generator, judge: LLMJudge | None, answer: AnswerPrompt, judge_prompt: JudgePrompt,
                 conversations: Sequence[Conversation]) -> dict:  # fmt: skip
    """What the numbers were made with: the prompts' full text, answerer, judge and category map."""
    categories = sorted({(q.category_id, q.category) for c in conversations for q in c.questions}, key=str)
    model = generator.language_model
    return {
        "answer_prompt": asdict(answer),
        "judge_prompt": asdict(judge_prompt),
        "answerer": {**generator.describe(), **({"fingerprint": model.fingerprint()} if model is not None else {})},
        "judge": judge.generator.describe() if judge is not None else None,
        "category_map": {str(source): name for source, name in categories},
    }


# ---- metrics ------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def score_of(record: QARecord, name: str) -> float | None:
    """One of SCORES for one question; None when it was not measured (no answer, no verdict)."""
    value = record.verdict if name == "j" else getattr(record, name)
    return None if value is None else float(value)


def _scores(records: Sequence[QARecord], name: str) -> list[float]:
    return [value for r in records if (value := score_of(r, name)) is not None]


def overall(records: Sequence[QARecord], include_unanswerable: bool) -> list[QARecord]:
    """The questions behind the headline numbers: adversarial/abstention questions only when asked."""
    return [r for r in records if include_unanswerable or r.answerable]


def aggregate(records: Sequence[QARecord], settings: QASettings) -> dict[str, float]:
    metrics: dict[str, float] = {
        "qa/questions": len(records),
        "qa/answer_failures": sum(r.answer_error is not None for r in records),
        "qa/judge_failures": sum(r.judge_error is not None for r in records),
    }
    main = overall(records, settings.include_unanswerable)
    for name in SCORES:
        values = _scores(main, name)
        if not values:
            continue
        metrics[f"qa/{name}"] = _mean(values)
        if name in ("j", "f1"):
            low, high = bootstrap_ci(values, resamples=settings.bootstrap_resamples, seed=settings.subset_seed)
            metrics[f"qa/{name}_ci95_low"], metrics[f"qa/{name}_ci95_high"] = low, high
    by_category: dict[str, list[QARecord]] = defaultdict(list)
    for record in records:
        by_category[record.category].append(record)
    for category, group in sorted(by_category.items()):
        metrics[f"qa/{category}/questions"] = len(group)
        for name in SCORES:
            values = _scores(group, name)
            if values:
                metrics[f"qa/{category}/{name}"] = _mean(values)
    answered = [r for r in main if r.answer is not None]
    if answered:
        metrics["qa/context_tokens_mean"] = _mean([r.context_tokens for r in answered])
        metrics["qa/prompt_tokens_mean"] = _mean([r.prompt_tokens for r in answered])
        metrics.update(latency_percentiles([r.answer_ms for r in answered], "latency/answer_ms"))
        metrics.update(latency_percentiles([r.ttft_ms for r in answered], "latency/ttft_ms"))
    shown = [float(r.evidence_shown) for r in main if r.evidence_shown is not None]
    if shown:
        metrics["qa/evidence_in_context"] = _mean(shown)
    recall = [float(r.recall_all) for r in main if r.recall_all is not None]
    if settings.context == "retrieved" and recall:
        metrics[f"retrieval/recall_all@{settings.top_k}"] = _mean(recall)
    if settings.context == "full":
        metrics["qa/truncated_questions"] = sum(r.truncated for r in records)
    return metrics


def per_query(records: Sequence[QARecord], include_unanswerable: bool, top_k: int) -> dict[str, dict[str, float]]:
    """metric -> question id -> score, over the questions of the overall numbers (the report pairs them)."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for r in overall(records, include_unanswerable):
        for name in SCORES:
            value = score_of(r, name)
            if value is not None:
                scores[f"qa/{name}"][r.question_id] = value
        if r.recall_all is not None:
            scores[f"retrieval/recall_all@{top_k}"][r.question_id] = float(r.recall_all)
    return dict(scores)
