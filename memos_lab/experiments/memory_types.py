"""The same facts served three ways: as text in the context, as a KV cache of that text, as LoRA weights.

Facts are knowledge edits ("<subject prompt> <target>."); a question is the edit prompt (reliability) or
its first paraphrase (generalisation), answered by greedy raw-text continuation and scored as in the
editing literature (the continuation starts with the target). `experiment.memory` picks the form:
- `text`: the facts as a context block, the whole prompt prefilled for every question;
- `kv`: the context block's KV cache built once and reused as the prefix (the same computation: its
  answers are compared token for token with text mode's, measured interleaved, with the TTFT ratio);
- `lora`: the facts trained into an adapter (`parametric=...`), nothing in the context.
Per form: accuracy, time to first token, storage bytes, the cost of writing all facts and of changing one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import hydra.utils
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError
from memos_lab.eval.editing import rate, starts_with_target
from memos_lab.experiments.common import ExperimentSettings, load_records
from memos_lab.generation.base import Generator
from memos_lab.loggers.base import Tracker
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.models.decode import KVCache, greedy, prefill
from memos_lab.models.device import clock
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import one_of, positive_int, uses_settings

PREFIX = "memtypes/"
FORMS = ("text", "kv", "lora")
CONTEXT_HEADER = "Facts:\n"


def fact_text(edit: KnowledgeEdit) -> str:
    return f"{edit.prompt} {edit.target_new}."


def context_text(edits: Sequence[KnowledgeEdit]) -> str:
    return CONTEXT_HEADER + "\n".join(fact_text(edit) for edit in edits) + "\n\n"


def answer(
    lm: LanguageModel, ids: list[int], max_new_tokens: int, prefix: KVCache | None = None
) -> tuple[list[int], float]:
    """Greedy continuation of raw token ids (no chat template) and the seconds to its first token."""
    started = clock(lm.device)
    decoded = greedy(lm, ids, max_new_tokens, prefix)
    return decoded.token_ids, decoded.first_token_at - started


@dataclass(frozen=True)
class MemoryTypesSettings(ExperimentSettings):
    memory: str = "kv"  # text | kv | lora
    n_facts: int = 80  # ~1k context tokens with SmolLM2
    n_questions: int | None = 16  # facts asked about (prompt + first paraphrase each), evenly spread; null: all
    max_new_tokens: int = 6

    def validate(self) -> None:
        one_of(self, "memory", FORMS)
        positive_int(self, "n_facts", "n_questions", "max_new_tokens")


@uses_settings(MemoryTypesSettings)
def run(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    exp = MemoryTypesSettings.from_mapping(cfg.experiment)
    form = exp.memory
    edits = load_records(cfg, KnowledgeEdit)[: exp.n_facts]
    if len(edits) < 2:
        raise ConfigError("experiment.n_facts must be at least 2 (one fact is changed to time an update)")
    generator: Generator = hydra.utils.instantiate(cfg.llm)
    # raw-text continuations, KV caches and adapters all need the weights
    lm = generator.require_weights("experiment=memory_types (raw-text continuations, KV caches, LoRA)")
    tokenizer = lm.tokenizer

    def encode(text: str) -> list[int]:
        return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]

    context = context_text(edits)
    context_ids = encode(context)
    # Every fact is stored; the questions probe an evenly spread subset (each costs a full prefill in text mode).
    asked = edits[:: max(1, len(edits) // int(exp.n_questions))][: int(exp.n_questions)] if exp.n_questions else edits
    questions = [(edit.prompt, edit.target_new, "accuracy") for edit in asked]
    questions += [(edit.paraphrases[0], edit.target_new, "generalization") for edit in asked if edit.paraphrases]
    n_new = int(exp.max_new_tokens)
    metrics: dict[str, float] = {
        f"{PREFIX}facts": len(edits),
        f"{PREFIX}questions": len(questions),
        f"{PREFIX}context_tokens": len(context_ids),
    }

    parametric: ParametricMemory | None = None
    cache: KVCache | None = None
    started = clock(lm.device)
    if form == "lora":
        parametric = hydra.utils.instantiate(cfg.parametric, _partial_=True)(model=lm)
        metrics[f"{PREFIX}train_steps"] = parametric.edit(edits).steps
    elif form == "kv":
        cache = prefill(lm, context_ids).snapshot()
    else:
        encode(context)  # text: tokenising the context is all there is to do before a question
    metrics[f"{PREFIX}write_s"] = clock(lm.device) - started

    flags: dict[str, list[bool]] = {"accuracy": [], "generalization": []}
    ttft, text_ttft, matches = [], [], []
    for step, (prompt, target, kind) in enumerate(tqdm(questions, desc=f"{form} questions", unit="q")):
        ids = encode(prompt)
        if form == "lora":
            assert parametric is not None  # built above for form "lora"
            with parametric.applied():
                new, seconds = answer(lm, ids, n_new)
        else:
            new, seconds = answer(lm, context_ids + ids, n_new, cache)
            if form == "kv":  # interleaved text-mode reference: same answer, and the TTFT ratio
                reference, reference_s = answer(lm, context_ids + ids, n_new)
                matches.append(new == reference)
                text_ttft.append(reference_s)
        ttft.append(seconds)
        flags[kind].append(starts_with_target(cast(str, tokenizer.decode(new, skip_special_tokens=True)), target))
        tracker.log({f"{PREFIX}ttft_ms": seconds * 1000}, step=step)

    metrics[f"{PREFIX}accuracy"] = rate(flags["accuracy"])
    if flags["generalization"]:
        metrics[f"{PREFIX}generalization"] = rate(flags["generalization"])
    metrics[f"{PREFIX}ttft_ms_p50"] = float(np.median(ttft)) * 1000
    metrics[f"{PREFIX}prompt_tokens_mean"] = float(np.mean([len(encode(q)) for q, _, _ in questions])) + (
        0 if form == "lora" else len(context_ids)
    )
    if form == "kv":
        metrics[f"{PREFIX}text_match_frac"] = float(np.mean(matches))
        metrics[f"{PREFIX}ttft_speedup_vs_text"] = float(np.median(text_ttft) / np.median(ttft))
    metrics[f"{PREFIX}storage_bytes"] = _storage_bytes(form, context, cache, parametric)
    metrics[f"{PREFIX}update_s"] = _update_seconds(form, lm, edits, encode, cache, parametric)
    return metrics


def _storage_bytes(form: str, context: str, cache: KVCache | None, parametric: ParametricMemory | None) -> float:
    if form == "text":
        return float(len(context.encode("utf-8")))
    if form == "kv":
        assert cache is not None  # prefilled for form "kv"
        return float(cache.nbytes)
    assert parametric is not None  # built for form "lora"
    with tempfile.TemporaryDirectory() as folder:  # what the adapter takes on disk (safetensors + manifest)
        parametric.save(Path(folder) / "adapter")
        return float(sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()))


def _update_seconds(
    form: str,
    lm: LanguageModel,
    edits: list[KnowledgeEdit],
    encode: Callable[[str], list[int]],
    cache: KVCache | None,
    parametric: ParametricMemory | None,
) -> float:
    """Seconds until a changed fact (the middle one gets another fact's target) is served."""
    middle = len(edits) // 2
    changed = replace(
        edits[middle], target_new=edits[middle - 1].target_new, edit_id=f"{edits[middle].edit_id}-changed"
    )
    updated = [*edits[:middle], changed, *edits[middle + 1 :]]
    started = clock(lm.device)
    if form == "kv":  # the cache up to the changed fact is kept, the rest recomputed
        prefill(lm, encode(context_text(updated)), cache).snapshot()
    elif form == "lora":
        assert parametric is not None  # built for form "lora"
        parametric.edit([changed])
    else:
        encode(context_text(updated))
    return clock(lm.device) - started
