"""Knowledge editing with a parametric memory: train the edits batch by batch, then score them.

Reliability / generalisation: the greedy continuation of the edit prompt / a paraphrase starts with the
new target. Locality: the greedy continuation of an unrelated prompt is the base model's. Portability:
a one-hop question continues with its expected answer. The `_prob` versions ask whether the new target
is more likely than the old one (CounterFact's efficacy / paraphrase scores); `neighborhood_prob`: on a
neighbour prompt whose answer is the edit's old target (CounterFact), the old target stays more likely than
the new one. Fluency: ROME's n-gram entropy of greedy generations from the edited subjects, before
(`fluency_base`) and after the edits, so a method cannot win by breaking the model. The `_token` versions are
EasyEdit's own token-level scores, comparable with published tables: the share of target tokens that are the
teacher-forced argmax, and for locality the share of the probe answer's positions whose argmax is unchanged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import hydra.utils
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError
from memos_lab.eval.editing import more_likely, ngram_entropy, rate, starts_with_target, token_agreement, unchanged
from memos_lab.experiments.common import ExperimentSettings, load_records
from memos_lab.loggers.base import Tracker
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.llm import LanguageModel
from memos_lab.models.probe import encode_target, greedy_continuations, target_argmax, target_logprobs
from memos_lab.settings import non_negative_int, one_of, positive_int, uses_settings

PREFIX = "lora/"
REPEATED_SUBJECTS = ("first", "keep")
T = TypeVar("T")
Predicted = tuple[list[int], list[int]]  # teacher-forced argmax ids at the target's positions, and the target ids
Generate = Callable[[list[str], int], list[list[int]]]  # prompts, new tokens -> greedy continuations


@dataclass(frozen=True)
class LoRAUpdateSettings(ExperimentSettings):
    n_edits: int | None = None  # None: every edit of the dataset
    first_edit: int = 0  # records skipped first (held-out halves: tune on 0-99, check on 100-199)
    n_batches: int = 1  # > 1: sequential editing, and lora/retention scores the earlier batches after the last
    locality_tokens: int = 8  # greedy tokens compared with the base model's for locality
    eval_batch_size: int = 32
    fluency_prompts: int = 50  # edited subjects whose greedy generations score lora/fluency (n-gram entropy, bits)
    fluency_tokens: int = 32
    # first: one edit per subject, later records of an edited subject are skipped (zsRE rewords a question
    # several times with contradicting new answers, which no edit can all satisfy); keep: every record
    repeated_subjects: str = "first"

    def validate(self) -> None:
        positive_int(
            self, "n_edits", "n_batches", "locality_tokens", "eval_batch_size", "fluency_prompts", "fluency_tokens"
        )
        non_negative_int(self, "first_edit")
        one_of(self, "repeated_subjects", REPEATED_SUBJECTS)


@dataclass(frozen=True)
class _Probes:
    """What the edits are scored on, taken from the edit records."""

    locality: list[str]  # unrelated prompts whose greedy continuation must not change
    answered: list[tuple[str, str]]  # locality probes with an answer: (prompt, answer), for the token score
    paraphrases: list[tuple[str, str]]  # (paraphrase, new target)
    portable: list[tuple[str, str]]  # (one-hop question, answer)
    subjects: list[str]  # the edited subjects whose generations score fluency
    answer_tokens: int  # greedy tokens enough to hold any target or portability answer

    @classmethod
    def of(cls, lm: LanguageModel, edits: list[KnowledgeEdit], fluency_prompts: int) -> _Probes:
        answers = [t for e in edits for t in [e.target_new, *_answers(e.portability)]]
        return cls(
            locality=[probe.prompt for edit in edits for probe in edit.locality],
            answered=[(probe.prompt, probe.answer) for edit in edits for probe in edit.locality if probe.answer],
            paraphrases=[(p, e.target_new) for e in edits for p in e.paraphrases],
            portable=[(p.prompt, p.answer) for e in edits for p in e.portability if p.answer],
            subjects=list(dict.fromkeys(e.subject for e in edits))[:fluency_prompts],
            answer_tokens=1 + max(len(encode_target(lm, t)) for t in answers),
        )


@dataclass(frozen=True)
class _Base:
    """The untouched model's answers, taken before any edit: locality and fluency are measured against them."""

    locality: list[list[int]]
    locality_argmax: list[list[int]]
    reliability: list[bool]  # the unedited model already says the new target
    fluency: list[float]


@uses_settings(LoRAUpdateSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = LoRAUpdateSettings.from_mapping(cfg.experiment)
    records = load_records(cfg, KnowledgeEdit)[exp.first_edit :]
    edits, skipped = _choose_edits(records, exp.n_edits, exp.repeated_subjects)
    batches = _batches(edits, int(exp.n_batches))
    lm: LanguageModel = hydra.utils.instantiate(cfg.model)
    # partial: Hydra would turn the LanguageModel dataclass into a config if passed as a kwarg
    memory: ParametricMemory = hydra.utils.instantiate(cfg.parametric, _partial_=True)(model=lm)
    generate = _generator(lm, int(exp.eval_batch_size))
    probes = _Probes.of(lm, edits, exp.fluency_prompts)
    base = _base_answers(lm, exp, generate, edits, probes)
    train_s, steps, learned = _write_edits(memory, batches, tracker)
    metrics, reliability = _greedy_scores(lm, exp, memory, generate, edits, probes, base)
    metrics |= {
        f"{PREFIX}edits": len(edits),
        f"{PREFIX}skipped_repeats": skipped,
        f"{PREFIX}batches": len(batches),
        f"{PREFIX}steps": steps,
        f"{PREFIX}batches_learned": learned / len(batches),
        f"{PREFIX}train_s": train_s,
        f"{PREFIX}train_s_per_100_edits": 100.0 * train_s / len(edits),
        f"{PREFIX}adapter_mb": _saved_mb(memory),
        f"{PREFIX}gate_edit_prompts": rate(memory.applies([e.prompt for e in edits])),
    }
    if probes.locality:
        metrics[f"{PREFIX}gate_locality_prompts"] = rate(memory.applies(probes.locality))
    if len(batches) > 1:  # the edits of every batch but the last, scored after the last
        metrics[f"{PREFIX}retention"] = rate(reliability[: len(edits) - len(batches[-1])])
    metrics |= _likelihood_scores(lm, exp, memory, edits)
    metrics |= _token_scores(lm, exp, memory, edits, probes, base)
    residual = getattr(memory, "delta_residual", None)  # locate-then-edit memories: what a rank cap dropped
    if residual is not None:
        metrics[f"{PREFIX}delta_residual"] = residual
    return metrics


def _batches(edits: list[KnowledgeEdit], n_batches: int) -> list[list[KnowledgeEdit]]:
    """`n_batches` sequential batches of (nearly) equal size."""
    if not 1 <= n_batches <= len(edits):
        raise ConfigError(
            f"experiment.n_batches must be between 1 and the number of edits ({len(edits)}), got {n_batches}"
        )
    size = -(-len(edits) // n_batches)
    return [edits[i : i + size] for i in range(0, len(edits), size)]


def _base_answers(
    lm: LanguageModel, exp: LoRAUpdateSettings, generate: Generate, edits: list[KnowledgeEdit], probes: _Probes
) -> _Base:
    locality = generate(probes.locality, int(exp.locality_tokens))
    locality_argmax = [p for p, _ in _argmax(lm, probes.answered, int(exp.eval_batch_size))]
    reliability = _starts(lm, generate([e.prompt for e in edits], probes.answer_tokens), [e.target_new for e in edits])
    fluency = [ngram_entropy(ids) for ids in generate(probes.subjects, exp.fluency_tokens)]
    return _Base(locality, locality_argmax, reliability, fluency)


def _write_edits(
    memory: ParametricMemory, batches: list[list[KnowledgeEdit]], tracker: Tracker
) -> tuple[float, int, int]:
    """Edit batch by batch; the seconds, steps and learned batches summed over the batches."""
    train_s, steps, learned = 0.0, 0, 0
    for step, batch in enumerate(tqdm(batches, desc="edit batches", unit="batch")):
        report = memory.edit(batch)
        train_s += report.seconds
        steps += report.steps
        learned += report.learned
        tracker.log(
            {
                f"{PREFIX}batch_train_s": report.seconds,
                f"{PREFIX}batch_steps": report.steps,
                f"{PREFIX}batch_loss": report.final_loss,
            },
            step=step,
        )
    return train_s, steps, learned


def _greedy_scores(
    lm: LanguageModel,
    exp: LoRAUpdateSettings,
    memory: ParametricMemory,
    generate: Generate,
    edits: list[KnowledgeEdit],
    probes: _Probes,
    base: _Base,
) -> tuple[dict[str, float], list[bool]]:
    """Reliability, generalisation, locality, portability and fluency of the edited model's greedy answers;
    also each edit's reliability flag (retention scores the earlier batches' ones)."""

    def said(prompts: list[str], n: int) -> list[list[int]]:
        return _routed(memory, prompts, lambda idx: generate([prompts[i] for i in idx], n))

    answer_tokens = probes.answer_tokens
    reliability = _starts(lm, said([e.prompt for e in edits], answer_tokens), [e.target_new for e in edits])
    paraphrases, portable = probes.paraphrases, probes.portable
    generalization = _starts(lm, said([p for p, _ in paraphrases], answer_tokens), [t for _, t in paraphrases])
    locality_said = said(probes.locality, int(exp.locality_tokens))
    locality = [unchanged(b, a) for b, a in zip(base.locality, locality_said, strict=True)]
    portability = _starts(lm, said([p for p, _ in portable], answer_tokens), [a for _, a in portable])
    scored = {
        "reliability": reliability,
        "generalization": generalization,
        "locality": locality,
        "portability": portability,
        "base_reliability": base.reliability,
    }
    # a metric the data gives nothing to score on (no paraphrases, no portability questions) is left out
    metrics = {f"{PREFIX}{name}": rate(flags) for name, flags in scored.items() if flags}
    fluency = [ngram_entropy(ids) for ids in said(probes.subjects, exp.fluency_tokens)]
    metrics[f"{PREFIX}fluency"] = sum(fluency) / len(fluency)
    metrics[f"{PREFIX}fluency_base"] = sum(base.fluency) / len(base.fluency)
    return metrics, reliability


def _likelihood_scores(
    lm: LanguageModel, exp: LoRAUpdateSettings, memory: ParametricMemory, edits: list[KnowledgeEdit]
) -> dict[str, float]:
    """CounterFact's scores, for edits with an old target: the new target beats the old one on the edit and
    paraphrase prompts, and the old one stays ahead on neighbour prompts whose answer it is."""
    metrics: dict[str, float] = {}
    scorer = _scorer(lm, int(exp.eval_batch_size))
    with_old = [e for e in edits if e.target_old]
    for name, pairs in (
        ("reliability_prob", [(e.prompt, e) for e in with_old]),
        ("generalization_prob", [(p, e) for e in with_old for p in e.paraphrases]),
    ):
        if pairs:
            metrics[f"{PREFIX}{name}"] = rate(_new_beats_old(memory, scorer, pairs))
    neighbours = [(p.prompt, e) for e in with_old for p in e.locality if p.answer == e.target_old]
    if neighbours:
        metrics[f"{PREFIX}neighborhood_prob"] = rate([not won for won in _new_beats_old(memory, scorer, neighbours)])
    return metrics


def _token_scores(
    lm: LanguageModel,
    exp: LoRAUpdateSettings,
    memory: ParametricMemory,
    edits: list[KnowledgeEdit],
    probes: _Probes,
    base: _Base,
) -> dict[str, float]:
    """EasyEdit's token-level scores: the share of target tokens that are the teacher-forced argmax, and for
    locality the share of the probe answers' positions whose argmax is unchanged."""
    metrics: dict[str, float] = {}
    token_scored = {
        "reliability_token": [(e.prompt, e.target_new) for e in edits],
        "generalization_token": probes.paraphrases,
        "locality_token": probes.answered,
    }
    for name, prompts_targets in token_scored.items():
        if not prompts_targets:
            continue

        def argmax_of(idx: list[int], chosen: list[tuple[str, str]] = prompts_targets) -> list[Predicted]:
            return _argmax(lm, [chosen[i] for i in idx], int(exp.eval_batch_size))

        said_argmax = _routed(memory, [p for p, _ in prompts_targets], argmax_of)
        expected = base.locality_argmax if name == "locality_token" else [target for _, target in said_argmax]
        scores = [
            token_agreement(predicted, wanted) for (predicted, _), wanted in zip(said_argmax, expected, strict=True)
        ]
        metrics[f"{PREFIX}{name}"] = sum(scores) / len(scores)
    return metrics


def _choose_edits(records: list[KnowledgeEdit], n: int | None, repeated: str) -> tuple[list[KnowledgeEdit], int]:
    """The first `n` records (all when None), and how many were skipped because their subject was already
    edited (repeated="first"; the subject compared case- and space-insensitively)."""
    if repeated == "keep":
        return records[:n], 0
    chosen: list[KnowledgeEdit] = []
    seen: set[str] = set()
    skipped = 0
    for record in records:
        if n is not None and len(chosen) == n:
            break
        subject = " ".join(record.subject.lower().split())
        if subject in seen:
            skipped += 1
            continue
        seen.add(subject)
        chosen.append(record)
    return chosen, skipped


def _new_beats_old(
    memory: ParametricMemory,
    scorer: Callable[[list[str], list[str]], list[float]],
    pairs: list[tuple[str, KnowledgeEdit]],
) -> list[bool]:
    """Per (prompt, edit): the edited model finds the edit's new target more likely than its old one."""
    prompts = [p for p, _ in pairs]
    new = _routed(memory, prompts, lambda idx: scorer([prompts[i] for i in idx], [pairs[i][1].target_new for i in idx]))
    # callers pass only edits that have a target_old
    old = _routed(
        memory, prompts, lambda idx: scorer([prompts[i] for i in idx], [cast(str, pairs[i][1].target_old) for i in idx])
    )
    return [more_likely(n, o) for n, o in zip(new, old, strict=True)]


def _answers(probes: Sequence) -> list[str]:
    return [p.answer for p in probes if p.answer]


def _generator(lm: LanguageModel, batch_size: int) -> Generate:
    def generate(prompts: list[str], n: int) -> list[list[int]]:
        unique = list(dict.fromkeys(prompts))  # locality probes repeat across edits: decode each once
        said = dict(zip(unique, greedy_continuations(lm, unique, n, batch_size), strict=True)) if unique else {}
        return [said[p] for p in prompts]

    return generate


def _argmax(lm: LanguageModel, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Predicted]:
    return target_argmax(lm, [p for p, _ in pairs], [t for _, t in pairs], batch_size) if pairs else []


def _scorer(lm: LanguageModel, batch_size: int) -> Callable[[list[str], list[str]], list[float]]:
    return lambda prompts, targets: target_logprobs(lm, prompts, targets, batch_size) if prompts else []


def _starts(lm: LanguageModel, continuations: list[list[int]], targets: Sequence[str]) -> list[bool]:
    return [
        starts_with_target(cast(str, lm.tokenizer.decode(ids, skip_special_tokens=True)), t)
        for ids, t in zip(continuations, targets, strict=True)
    ]


def _routed(memory: ParametricMemory, prompts: list[str], fn: Callable[[list[int]], list[T]]) -> list[T]:
    """fn over prompt indices: with the memory applied for the prompts it accepts, the base model for the rest."""
    accepts = memory.applies(prompts)
    inside = [i for i, ok in enumerate(accepts) if ok]
    with memory.applied():
        answers = dict(zip(inside, fn(inside), strict=True))
    outside = [i for i, ok in enumerate(accepts) if not ok]
    answers.update(zip(outside, fn(outside), strict=True))
    return [answers[i] for i in range(len(prompts))]


def _saved_mb(memory: ParametricMemory) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "memory"
        memory.save(folder)
        return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20
