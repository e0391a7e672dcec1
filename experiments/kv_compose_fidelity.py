"""Two diagnostics of the composition strategies on SmolLM2 (results/kv_compose/README.md), on
experiment=kv_compose's own prompts (LoCoMo dev, retrieved top-10, the answer prompt's system message):

`attention`: why `naive` agrees with a full prefill more often than `rerotate`. Per prompt: next-token KL
(bits) and top-1 agreement against a full prefill for `naive`, `rerotate`, and `rerotate` with only the first
token of each later memory recomputed; and how much attention the first answer position pays to the later
memories' tokens (its share, averaged over layers and heads) under the full prefill, `naive` and `rerotate`.

`selection`: which CacheBlend selection agrees best: `cacheblend` at --frac with each of --deviations (values,
keys, both) chosen on each of --check-layers, next to `leading` at the same fraction. With several
conversations it also cross-validates the choice of check layer, leaving one conversation out at a time: the
layer with the lowest mean KL on the other conversations is scored on the one left out, so the held-out
numbers say whether the choice carries over to conversations it was not made on. Per-prompt rows go to
`<part>.csv`.

Each writes `<part>.md` to --out:

    python experiments/kv_compose_fidelity.py attention --conversations 1 --per-group 1 --out results/kv_compose/fidelity
    python experiments/kv_compose_fidelity.py selection --conversations 5 --per-group 2 --skip 24 --limit 12 \
        --out results/kv_compose/fidelity
    python experiments/kv_compose_fidelity.py selection --conversations 5 --per-group 1 --deviations both \
        --check-layers 1 2 4 8 --out results/kv_compose/fidelity/cv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from transformers import DynamicCache

from memos_lab.cli import CONF_DIR
from memos_lab.data.schema import Conversation
from memos_lab.eval.kv import next_token_kl, top1_agrees
from memos_lab.experiments.common import load_records
from memos_lab.experiments.kv_compose import KVComposeSettings, prompt_rest
from memos_lab.experiments.qa import (
    ContextBuilder,
    build_prompts,
    context_window,
    prepare_conversation,
    select_questions,
)
from memos_lab.memory.activation.compose.base import CompositionStrategy, Layout, encode_chunks
from memos_lab.memory.activation.compose.cacheblend import DEVIATIONS, CacheBlendComposition
from memos_lab.memory.activation.compose.leading import LeadingComposition
from memos_lab.memory.activation.compose.naive import NaiveComposition
from memos_lab.memory.activation.compose.rerotate import RerotateComposition
from memos_lab.memory.activation.template import ChunkedPrompt, chunked_memory_prompt
from memos_lab.models.decode import KVCache, prefill
from memos_lab.models.llm import LanguageModel, load_smollm2
from memos_lab.settings import register_schemas

LOCOMO = "/work/shared/data/locomo/locomo10_dev.json"


class FirstTokenRecomputed(CompositionStrategy):
    """rerotate, with the first token of each later memory recomputed in context."""

    name = "rerotate+first"
    needs_rope = True

    def select(self, lm: LanguageModel, layout: Layout) -> list[int]:
        return [next(group) for _, group in groupby(layout.candidates, key=layout.chunk_of.__getitem__)]


def prompts(conversations: int, per_group: int) -> list[tuple[str, list[str], str, str, str]]:
    """(conversation id, memory lines, system message, user message, template) of experiment=kv_compose's qa
    prompts."""
    register_schemas()
    overrides = ["experiment=kv_compose", "dataset=locomo", f"dataset.path={LOCOMO}", f"dataset.limit={conversations}",
                 f"experiment.max_questions={per_group}", "logger=none"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    settings = KVComposeSettings.from_mapping(cfg.experiment).qa_settings()
    answer, _ = build_prompts(cfg)
    generator = hydra.utils.instantiate(cfg.llm)
    builder = ContextBuilder(settings, answer, generator.count_tokens, context_window(generator, settings))
    embedder, reader = hydra.utils.instantiate(cfg.embedder), hydra.utils.instantiate(cfg.reader)
    out = []
    for conversation in load_records(cfg, Conversation):
        questions = select_questions(conversation, settings.max_questions, settings.subset_seed)
        for item in prepare_conversation(conversation, questions, settings, builder, cfg, embedder, reader, Counter()):
            messages = answer.messages(item.lines, item.question.question)
            out.append((conversation.conversation_id, answer.memory_block(item.lines), messages[0]["content"],
                        messages[1]["content"], answer.system))  # fmt: skip
    generator.close()
    return out


@torch.no_grad()
def last_token_attention(lm: LanguageModel, ids: list[int], cache: KVCache | None, start: int) -> torch.Tensor:
    """The first answer position's attention [layers, heads, keys] over `ids`, with the first `start` tokens
    taken from `cache` (None: a full prefill)."""
    if cache is None:
        out = lm.model(input_ids=torch.tensor([ids]), output_attentions=True)
    else:
        past = DynamicCache(config=lm.model.config)
        for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
            past.update(k.clone(), v.clone(), layer)
        out = lm.model(input_ids=torch.tensor([ids[start:]]), past_key_values=past, output_attentions=True,
                       position_ids=torch.arange(start, len(ids))[None], use_cache=True)  # fmt: skip
    return torch.stack([a[0, :, -1, :] for a in out.attentions])


def agreement(lm: LanguageModel, ids: list[int], cache: KVCache, full: torch.Tensor, name: str) -> dict[str, Any]:
    logits = prefill(lm, ids, cache).logits
    return {f"{name} KL": next_token_kl(full, logits), f"{name} top1": top1_agrees(full, logits)}


def selection(lm: LanguageModel, chunked: ChunkedPrompt, rest: list[int], args: argparse.Namespace) -> dict[str, Any]:
    ids = [*chunked.ids, *rest]
    full = prefill(lm, ids).logits
    caches = encode_chunks(lm, chunked)
    strategies: list[CompositionStrategy] = [LeadingComposition(recompute_frac=args.frac)]
    strategies += [CacheBlendComposition(recompute_frac=args.frac, check_layer=layer, deviation=deviation)
                   for layer in args.check_layers for deviation in args.deviations]  # fmt: skip
    row: dict[str, Any] = {}
    for strategy in strategies:
        composed = strategy.compose(lm, chunked, caches)
        row.update(agreement(lm, ids, composed.cache, full, strategy.describe()))
        row[f"{strategy.describe()} computed"] = composed.computed_tokens / composed.context_tokens
    return row


def cross_validated(
    rows: list[dict[str, Any]], conversations: list[str], layers: list[int], deviation: str, frac: float
) -> list[str]:
    """Leave one conversation out: the check layer with the lowest mean KL on the others, scored on it."""
    name = {
        layer: CacheBlendComposition(recompute_frac=frac, check_layer=layer, deviation=deviation).describe()
        for layer in layers
    }
    lines = ["| left out | prompts | layer chosen on the rest | its KL / top1 there | default (layer 1) KL / top1 there |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    held: dict[str, list[float]] = {"chosen KL": [], "chosen top1": [], "default KL": [], "default top1": []}
    for left in sorted(set(conversations)):
        rest = [row for row, c in zip(rows, conversations, strict=True) if c != left]
        out = [row for row, c in zip(rows, conversations, strict=True) if c == left]
        chosen = min(layers, key=lambda layer: np.mean([row[f"{name[layer]} KL"] for row in rest]))
        scores = {}
        for label, layer in (("chosen", chosen), ("default", 1)):
            scores[label] = [
                np.mean([float(row[f"{name[layer]} {measure}"]) for row in out]) for measure in ("KL", "top1")
            ]
            held[f"{label} KL"] += [float(row[f"{name[layer]} KL"]) for row in out]
            held[f"{label} top1"] += [float(row[f"{name[layer]} top1"]) for row in out]
        lines.append(f"| {left} | {len(out)} | {chosen} | {scores['chosen'][0]:.3f} / {scores['chosen'][1]:.2f} | "
                     f"{scores['default'][0]:.3f} / {scores['default'][1]:.2f} |")  # fmt: skip
    lines.append(f"| all, held out | {len(rows)} | | {np.mean(held['chosen KL']):.3f} / {np.mean(held['chosen top1']):.2f} | "
                 f"{np.mean(held['default KL']):.3f} / {np.mean(held['default top1']):.2f} |")  # fmt: skip
    return lines


def attention(lm: LanguageModel, chunked: ChunkedPrompt, rest: list[int], args: argparse.Namespace) -> dict[str, Any]:
    ids = [*chunked.ids, *rest]
    full = prefill(lm, ids).logits
    caches = encode_chunks(lm, chunked)
    later = [p for start, end in chunked.spans[1:] for p in range(start, end)]
    row: dict[str, Any] = {}
    composed = {}
    for strategy in (NaiveComposition(), RerotateComposition(), FirstTokenRecomputed()):
        composed[strategy.name] = cache = strategy.compose(lm, chunked, caches).cache
        row.update(agreement(lm, ids, cache, full, strategy.name))
    for name, cache in (("full", None), ("naive", composed["naive"]), ("rerotate", composed["rerotate"])):
        attention = last_token_attention(lm, ids, cache, len(chunked.ids))
        row[f"{name} attention on later memories"] = attention[:, :, later].sum(-1).mean().item()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["attention", "selection"])
    parser.add_argument("--conversations", type=int, default=1)
    parser.add_argument("--per-group", type=int, default=1)
    parser.add_argument("--skip", type=int, default=0, help="prompts skipped first")
    parser.add_argument("--limit", type=int, default=None, help="prompts measured at most")
    parser.add_argument("--frac", type=float, default=0.15, help="selection: the recompute fraction")
    parser.add_argument("--check-layers", type=int, nargs="+", default=[1, 4], help="selection: cacheblend's")
    parser.add_argument("--deviations", nargs="+", choices=DEVIATIONS, default=list(DEVIATIONS), help="selection")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = Path("/proc/loadavg").read_text().strip()
    started = time.time()
    eager = "eager" if args.part == "attention" else None  # sdpa returns no attention weights
    lm = load_smollm2(os.path.expanduser("~/.cache/memos_lab"), attn_implementation=eager)
    measure = attention if args.part == "attention" else selection
    chosen = prompts(args.conversations, args.per_group)[args.skip :]
    rows, conversations = [], []
    for conversation, lines, system, user, template in chosen[: args.limit]:
        rows.append(measure(lm, chunked_memory_prompt(lm, lines, template), prompt_rest(lm, system, user), args))
        conversations.append(conversation)
        print(len(rows), rows[-1], flush=True)
    names = list(rows[0])
    table = ["| measure | mean over prompts |", "| --- | --- |"]
    table += [f"| {name} | {np.mean([float(row[name]) for row in rows]):.3f} |" for name in names]
    if args.part == "selection" and len(set(conversations)) > 1 and 1 in args.check_layers:
        for deviation in args.deviations:
            table += [
                "",
                f"Check layer chosen by leave-one-conversation-out (deviation={deviation}, lowest mean KL):",
                "",
            ]
            table += cross_validated(rows, conversations, args.check_layers, deviation, args.frac)
    titles = {"attention": "Why naive beats rerotate on SmolLM2: attention on the later memories",
              "selection": f"CacheBlend's selection on SmolLM2 at {args.frac:g} recompute"}  # fmt: skip
    text = "\n".join([
        f"# {titles[args.part]}",
        "",
        f"Made by `python experiments/kv_compose_fidelity.py {' '.join(sys.argv[1:])}`: {len(rows)} prompts of "
        "experiment=kv_compose (LoCoMo dev, retrieved top 10, SmolLM2-135M fp32), "
        f"{time.time() - started:.0f} s, load average before: {load}, after: "
        f"{Path('/proc/loadavg').read_text().strip()}. `KL` is the next-token KL (bits) against a full prefill "
        "of the same prompt, `top1` the share of prompts whose next token equals the full prefill's; attention "
        "is the first answer position's share on the later memories' tokens, averaged over layers and heads.",
        "",
        *table,
        "",
    ])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.part}.md").write_text(text)
    with (args.out / f"{args.part}.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["conversation", *names])
        writer.writeheader()
        writer.writerows({"conversation": c, **row} for c, row in zip(conversations, rows, strict=True))
    print(text)


if __name__ == "__main__":
    main()
