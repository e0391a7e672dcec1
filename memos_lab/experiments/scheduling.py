"""Scheduling experiment: replay each dialogue session by session through a MemScheduler and ask every
question once its evidence has been seen.

Every turn is added to the cube (an add event) and, with `turns_as_queries`, is also a user turn the
scheduler retrieves for. Before a question is handled we record whether its gold evidence already sat
in working memory (`sched/working_hit_rate`); then MemChat answers it from the assembled working memory.
With `mode=kv compare_text=true` every question is also answered in the text form on the same working
memory (interleaved): first-token and answer agreement with it and the TTFT ratio are reported.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import hydra.utils
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.chat import MODES, TEMPLATE, ChatAnswer, MemChat
from memos_lab.data.schema import Conversation, Question
from memos_lab.errors import ConfigError, MemosError
from memos_lab.eval.judge import JudgeError, LLMJudge
from memos_lab.eval.qa import score_answer
from memos_lab.eval.retrieval import latency_percentiles
from memos_lab.experiments.common import PER_QUERY_ARTIFACT, ExperimentSettings, load_records, require_local_mos
from memos_lab.generation.base import Generator
from memos_lab.loggers.base import Tracker
from memos_lab.memory.activation.base import build_activation
from memos_lab.memory.reader import turn_item
from memos_lab.mos import MOS
from memos_lab.scheduler.activation import PolicyEviction
from memos_lab.scheduler.base import Budget, MemScheduler
from memos_lab.scheduler.parametric import ConsolidationSettings, Consolidator
from memos_lab.settings import Settings, one_of, positive, positive_int, uses_settings

log = logging.getLogger(__name__)


@dataclass
class QuestionRecord:
    question_id: str
    category: str
    hit_all: bool | None = None  # None: the question has no evidence to hit
    hit_any: bool | None = None
    answer: ChatAnswer | None = None
    f1: float | None = None
    em: float | None = None
    judged: bool | None = None
    judge_failed: bool = False
    answer_failed: bool = False
    working_items: int = 0
    working_tokens: int = 0


def question_slots(conversation: Conversation) -> dict[int, list[Question]]:
    """Session index after which each question is asked: once its last evidence turn was seen.

    Questions without evidence go after the last session that precedes their time, else after the last one.
    """
    session_of = {turn.turn_id: s for s, session in enumerate(conversation.sessions) for turn in session.turns}
    slots: dict[int, list[Question]] = defaultdict(list)
    for question in conversation.questions:
        if question.evidence:
            if any(turn_id not in session_of for turn_id in question.evidence):
                log.warning("question %s cites evidence outside its conversation; skipped", question.question_id)
                continue
            slot = max(session_of[turn_id] for turn_id in question.evidence)
        elif question.time:
            earlier = [s for s, session in enumerate(conversation.sessions) if session.time <= question.time]
            slot = earlier[-1] if earlier else len(conversation.sessions) - 1
        else:
            slot = len(conversation.sessions) - 1
        slots[slot].append(question)
    return slots


def spaced(slots: dict[int, list[Question]], keep: int | None) -> dict[int, list[Question]]:
    """`keep` of the slotted questions, evenly spaced in the order they are asked (all of them if None)."""
    ordered = [(slot, question) for slot in sorted(slots) for question in slots[slot]]
    if keep is None or keep >= len(ordered):
        return slots
    chosen = {int(i) for i in np.linspace(0, len(ordered) - 1, keep).round()}
    kept: dict[int, list[Question]] = defaultdict(list)
    for i, (slot, question) in enumerate(ordered):
        if i in chosen:
            kept[slot].append(question)
    return kept


@dataclass(frozen=True)
class ActivationTierSettings(Settings):
    """mode=kv: the KV caches of assembled working memories, evicted by the scheduler's policy."""

    section: ClassVar[str] = "experiment.activation"
    instantiated: ClassVar[bool] = False
    max_mb: float | None = 256.0  # None: unbounded
    # Encode each memory's chunk cache when it is written to the cube (off the question's path) rather than
    # when a question first composes it; the write-time work is reported (sched/kv_write_*).
    encode_on_write: bool = False

    def validate(self) -> None:
        positive(self, "max_mb")


@dataclass(frozen=True)
class SchedulingSettings(ExperimentSettings):
    mode: str = "text"  # text: memories in the prompt | kv: their KV cache from the activation tier | parametric: LoRA
    answer: bool = True  # false: scheduling metrics only, no generation (fast policy sweeps)
    turns_as_queries: bool = True  # every dialogue turn is also a user turn the scheduler retrieves for
    top_k: int = 5  # memories retrieved per user turn / question
    working_memory: Budget = field(default_factory=Budget)  # equal for every policy; one or both bounds
    activation: ActivationTierSettings = field(default_factory=ActivationTierSettings)  # mode=kv
    consolidation: ConsolidationSettings = field(default_factory=ConsolidationSettings)  # mode=parametric
    max_new_tokens: int = 24
    max_conversations: int | None = None  # keep SmolLM2 runs small: the first N conversations
    # Keep long dialogues' runs small: this many questions per conversation, evenly spaced over its questions
    # in the order they are asked (the others are not asked); None: every question.
    max_questions: int | None = None
    compare_text: bool = False  # mode=kv: also answer in the text form; agreement and TTFT against it

    def validate(self) -> None:
        one_of(self, "mode", MODES)
        positive_int(self, "top_k", "max_new_tokens", "max_conversations", "max_questions")
        if self.compare_text and self.mode != "kv":
            raise ConfigError(f"experiment.compare_text compares kv mode with the text form; mode is {self.mode!r}")
        if self.activation.encode_on_write and self.mode != "kv":
            raise ConfigError(f"experiment.activation.encode_on_write caches KV for kv mode; mode is {self.mode!r}")


@uses_settings(SchedulingSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = SchedulingSettings.from_mapping(cfg.experiment)
    require_local_mos(cfg, "its scheduler moves memories between the cube's slots, which a server keeps to itself")
    conversations = load_records(cfg, Conversation)
    if exp.max_conversations:
        conversations = conversations[: exp.max_conversations]
    budget = exp.working_memory
    hydra.utils.instantiate(cfg.scheduler)  # a bad policy setting fails here, before any model loads
    embedder = hydra.utils.instantiate(cfg.embedder)
    generator: Generator = hydra.utils.instantiate(cfg.llm)
    if exp.mode in ("kv", "parametric"):
        generator.require_weights(f"experiment.mode={exp.mode}")  # before any work
    strategy = hydra.utils.instantiate(cfg.compose) if exp.mode == "kv" else None
    judge = hydra.utils.instantiate(cfg.judge) if cfg.judge.get("_target_") else None

    records: list[QuestionRecord] = []
    interrupted = False
    consolidated, consolidation_s = 0, 0.0
    write_tokens, write_s = 0, 0.0  # mode=kv: chunk caches encoded when memories were written
    try:
        for step, conversation in enumerate(tqdm(conversations, desc="conversations", unit="conv")):
            user = conversation.conversation_id
            mos = MOS(textual_memory_factory=lambda: hydra.utils.instantiate(cfg.memory, embedder=embedder))
            mos.register_user(user)
            cube = mos.create_cube(user, cube_id=conversation.conversation_id)
            scheduler = MemScheduler(
                mos, user, cube.cube_id, hydra.utils.instantiate(cfg.scheduler), budget,
                top_k=int(exp.top_k), token_counter=generator.count_tokens,
            )  # fmt: skip
            activation = parametric = consolidator = None
            if exp.mode == "kv":
                activation = build_activation(
                    cfg.activation, generator.require_weights("kv mode"), PolicyEviction(scheduler.working), TEMPLATE,
                    budget_mb=exp.activation.max_mb,
                )  # fmt: skip
            if exp.mode == "parametric":
                model = generator.require_weights("parametric mode")
                parametric = hydra.utils.instantiate(cfg.parametric, _partial_=True)(model=model)
                consolidator = Consolidator(parametric, exp.consolidation)
            chat = MemChat(
                scheduler, generator, exp.mode, int(exp.max_new_tokens), activation, parametric, strategy=strategy,
                compare_text=exp.compare_text, encode_on_write=exp.activation.encode_on_write,
            )  # fmt: skip
            slots = spaced(question_slots(conversation), exp.max_questions)
            for s, session in enumerate(conversation.sessions):
                for turn in session.turns:
                    item = turn_item(conversation, turn, user)
                    mos.add(user, cube.cube_id, [item])
                    if exp.turns_as_queries:  # the stored item's embedding stands for the turn: one encode less
                        scheduler.on_user_turn(turn.text, vector=item.embedding)
                if consolidator is not None:  # sleep on it: the session's well-used memories go into the weights
                    report = consolidator.consolidate(scheduler)
                    consolidation_s += report.seconds if report else 0.0
                for question in slots.get(s, []):
                    records.append(_ask(question, scheduler, chat if exp.answer else None, judge))
            if chat.store_sync is not None:
                write_tokens += chat.store_sync.encoded_tokens
                write_s += chat.store_sync.encode_s
            if parametric is not None:
                assert consolidator is not None  # made together with the parametric memory
                consolidated += len(consolidator.consolidated)
                parametric.close()  # its adapter leaves the shared model with its conversation
            tracker.log(_summary(records, scheduler.evicted), step=step)
    except KeyboardInterrupt:
        interrupted = True  # keep what was measured; the runner still writes it
        log.warning("interrupted after %d questions; writing the metrics measured so far", len(records))
    generator.close()
    tracker.log_artifact(PER_QUERY_ARTIFACT, per_query(records))
    metrics = aggregate(records)
    if judge is not None:
        metrics["qa/judge_prompt_tokens"] = judge.prompt_tokens
        metrics["qa/judge_completion_tokens"] = judge.completion_tokens
    metrics["run/interrupted"] = float(interrupted)
    if exp.mode == "kv":
        metrics.update(write_time_metrics(records, write_tokens, write_s))
    if exp.mode == "parametric":
        metrics["sched/consolidated_items"] = consolidated
        metrics["sched/consolidation_s"] = consolidation_s
    return metrics


def _ask(question: Question, scheduler: MemScheduler, chat: MemChat | None, judge: LLMJudge | None) -> QuestionRecord:
    record = QuestionRecord(question.question_id, question.category)
    if question.answerable and question.evidence:
        present = {item.metadata.extra.get("turn_id") for item in scheduler.memories()}
        record.hit_all = all(turn_id in present for turn_id in question.evidence)
        record.hit_any = any(turn_id in present for turn_id in question.evidence)
    if chat is None:
        memories = scheduler.on_user_turn(question.question)
    else:
        try:
            record.answer = chat.ask(question.question)
        except MemosError as error:  # e.g. a prompt longer than the model's context: counted, not fatal
            log.warning("question %s failed: %s", question.question_id, error)
            record.answer_failed = True
            return record
        memories = scheduler.memories()
        score = score_answer(record.answer.text, question.answer, question.category)
        record.f1, record.em = score.f1, score.em
        if judge is not None:
            try:
                record.judged = judge.judge(question.question, question.answer, record.answer.text)
            except JudgeError as error:
                log.warning("judge failed on %s: %s", question.question_id, error)
                record.judge_failed = True
    record.working_items = len(memories)
    record.working_tokens = scheduler.working.tokens
    return record


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _summary(records: list[QuestionRecord], evictions: int) -> dict[str, float]:
    hits = [r.hit_all for r in records if r.hit_all is not None]
    return {
        "progress/questions": len(records),
        "progress/working_hit_rate": _mean(hits),
        "progress/evictions": evictions,
    }


def per_query(records: list[QuestionRecord]) -> dict[str, dict[str, float]]:
    """metric -> question id -> score, for the report's paired tests between policies."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for r in records:
        if r.hit_all is not None:
            scores["sched/working_hit_rate"][r.question_id] = float(r.hit_all)
        if r.f1 is not None:
            scores["qa/f1"][r.question_id] = r.f1
            assert r.em is not None  # scored together with f1
            scores["qa/em"][r.question_id] = r.em
    return dict(scores)


def text_form_agreement(answers: Sequence[ChatAnswer]) -> dict[str, float]:
    """kv mode against the text form on the same prompts (compare_text): the first answer token and the
    whole greedy answer equal, and TTFT (measured interleaved) against the text form's."""
    first, whole, text_ttft, kv_ttft = [], [], [], []
    for a in answers:
        if a.text_form is None or a.token_ids is None:
            continue
        first.append(float(a.token_ids[:1] == a.text_form.token_ids[:1]))
        whole.append(float(a.token_ids == a.text_form.token_ids))
        text_ttft.append(a.text_form.ttft_ms)
        if a.ttft_ms is not None:
            kv_ttft.append(a.ttft_ms)
    if not first:
        return {}
    metrics = {"sched/first_token_agreement": _mean(first), "sched/answer_agreement": _mean(whole)}
    metrics.update(latency_percentiles(text_ttft, "latency/text_ttft_ms"))
    if kv_ttft:
        metrics["sched/ttft_speedup"] = float(np.median(text_ttft) / np.median(kv_ttft))
    return metrics


def write_time_metrics(records: list[QuestionRecord], tokens: int, seconds: float) -> dict[str, float]:
    """The chunk encoding done when memories were written (encode_on_write), and the prefill saved once it
    is counted too: everything the kv form ran through the model against the text form's prompts."""
    written = {"sched/kv_write_encoded_tokens": float(tokens), "sched/kv_write_encode_s": seconds}
    answers = [r.answer for r in records if r.answer is not None]
    prompt_tokens = sum(a.prompt_tokens for a in answers)
    if prompt_tokens:
        prefilled = sum(a.prefilled_tokens for a in answers)
        written["sched/compute_saved_with_writes_frac"] = 1 - (prefilled + tokens) / prompt_tokens
    return written


def aggregate(records: list[QuestionRecord]) -> dict[str, float]:
    """The experiment's metrics from its per-question records (only what was measured)."""
    metrics: dict[str, float] = {"qa/questions": len(records)}
    hit_all = [float(r.hit_all) for r in records if r.hit_all is not None]
    hit_any = [float(r.hit_any) for r in records if r.hit_any is not None]
    metrics["sched/working_hit_rate"] = _mean(hit_all)
    metrics["sched/working_hit_rate_any"] = _mean(hit_any)
    metrics["sched/questions_with_evidence"] = len(hit_all)
    metrics["sched/working_items_mean"] = _mean([r.working_items for r in records])
    metrics["sched/working_tokens_mean"] = _mean([r.working_tokens for r in records])
    answered = [r for r in records if r.answer is not None]
    answers = [r.answer for r in answered if r.answer is not None]  # theirs, in the same order (narrowed for mypy)
    metrics["qa/answer_failures"] = sum(r.answer_failed for r in records)
    if answered:
        # an answered question was scored (_ask sets f1 and em right after the answer)
        metrics["qa/f1"] = _mean([r.f1 for r in answered if r.f1 is not None])
        metrics["qa/em"] = _mean([r.em for r in answered if r.em is not None])
        metrics["qa/context_tokens_mean"] = _mean([a.context_tokens for a in answers])
        prompt_tokens = sum(a.prompt_tokens for a in answers)
        metrics["sched/prefill_saved_frac"] = 1 - sum(a.prefilled_tokens for a in answers) / prompt_tokens
        kv = [a for a in answers if a.kv_hit is not None]
        if kv:
            metrics["sched/kv_hit_rate"] = _mean([float(bool(a.kv_hit)) for a in kv])
            # the share of system-message tokens whose KV was computed fresh (misses compose, hits reuse)
            recomputed = sum(a.kv_recomputed_tokens or 0 for a in kv)
            metrics["sched/kv_recomputed_frac"] = recomputed / max(1, sum(a.context_tokens for a in kv))
            metrics["sched/kv_bytes_copied_mean"] = _mean([float(a.kv_bytes_copied or 0) for a in kv])
            # memories without a cache yet, encoded alone (once, then stored) while the question waited
            encoded = sum(a.kv_encoded_tokens or 0 for a in kv)
            metrics["sched/kv_encoded_frac"] = encoded / max(1, sum(a.context_tokens for a in kv))
        metrics.update(text_form_agreement(answers))
        metrics.update(latency_percentiles([a.answer_ms for a in answers], "latency/answer_ms"))
        ttft = [a.ttft_ms for a in answers if a.ttft_ms is not None]
        if ttft:  # a served model tells it only when streaming
            metrics.update(latency_percentiles(ttft, "latency/ttft_ms"))
        metrics["qa/completion_tokens_total"] = sum(a.completion_tokens for a in answers)
        metrics["qa/prompt_tokens_total"] = prompt_tokens
        by_category: dict[str, list[QuestionRecord]] = defaultdict(list)
        for r in answered:
            by_category[r.category].append(r)
        for category, group in sorted(by_category.items()):
            metrics[f"qa/{category}/f1"] = _mean([r.f1 for r in group if r.f1 is not None])
            metrics[f"qa/{category}/questions"] = len(group)
    judged = [float(r.judged) for r in records if r.judged is not None]
    if judged or any(r.judge_failed for r in records):
        metrics["qa/judge_failures"] = sum(r.judge_failed for r in records)
        if judged:
            metrics["qa/judge"] = _mean(judged)
    return metrics
