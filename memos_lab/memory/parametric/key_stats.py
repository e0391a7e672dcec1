"""Second-moment statistics E[k kᵀ] of the MLP keys (the input of `down_proj`) per model and layer.

Locate-then-edit methods need them to keep what the model already knows: ROME and MEMIT weight their
update by C = E[k kᵀ], AlphaEdit projects it onto C's null space. The statistics come from a corpus the
project makes itself (no download) and are computed once per model, corpus and layer, then cached under
`{cache_dir}/key_stats/<model fingerprint hash>/<corpus>-<tokens>-<seed>/`. Corpora:

- `model`: text sampled from the model itself (top-k 50) after varied openings;
- `synthetic`: the turns of the project's synthetic dialogues (memos_lab/data/synthetic.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
from safetensors.torch import save
from tqdm import tqdm

from memos_lab.artifact import FINGERPRINT_IGNORED, MANIFEST, read_artifact, write_artifact
from memos_lab.errors import ConfigError, DataError
from memos_lab.models.llm import LanguageModel
from memos_lab.models.probe import left_padded

CORPORA = ("model", "synthetic")
# A d x d second moment from fewer than this many tokens per key dimension is too poorly conditioned to
# invert (ROME / MEMIT) or to split into a null space (AlphaEdit).
TOKENS_PER_DIM = 10
SEQ_TOKENS = 128  # tokens per corpus sequence
OPENINGS = (
    "The history of",
    "In the morning",
    "Scientists have found that",
    "The recipe for",
    "According to the report,",
    "She was born in",
    "The city of",
    "My favourite",
    "The company announced",
    "During the war,",
    "The rules of the game",
    "Once upon a time",
    "The first thing to know about",
    "He studied at",
    "The river flows",
    "In music,",
    "The government said",
    "A good way to",
    "The museum",
    "Football is",
    "The novel tells",
    "Computers are",
    "The weather in",
    "The president of",
    "Many people believe",
)


def fingerprint_key(lm: LanguageModel) -> str:
    """A short, stable name for the model's fingerprint (its cache folder), by the artifact layer's rule:
    the name the model was loaded through does not count, so `model=hf` and `model=smollm2` share it."""
    fingerprint = {key: value for key, value in lm.fingerprint().items() if key not in FINGERPRINT_IGNORED}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def key_dim(lm: LanguageModel) -> int:
    return int(lm.model.config.intermediate_size)


def required_tokens(lm: LanguageModel) -> int:
    return TOKENS_PER_DIM * key_dim(lm)


def second_moments(
    lm: LanguageModel, layers: Sequence[int], corpus: str, tokens: int, cache_dir: str | Path, seed: int = 0
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float32, d_k x d_k) of each layer's MLP keys over `tokens` corpus tokens; cached."""
    if corpus not in CORPORA:
        raise ConfigError(f"parametric.stats_corpus: unknown {corpus!r}; valid: {', '.join(CORPORA)}")
    needed = required_tokens(lm)
    if tokens < needed:
        raise ConfigError(
            f"parametric.stats_tokens={tokens} is too small for a well-conditioned {key_dim(lm)}x{key_dim(lm)} key "
            f"covariance: use at least {needed} ({TOKENS_PER_DIM} tokens per key dimension)"
        )
    folder = Path(cache_dir).expanduser() / "key_stats" / fingerprint_key(lm) / f"{corpus}-{tokens}-{seed}"
    cached = read_stats(folder, lm)
    missing = [layer for layer in layers if layer not in cached]
    if missing:
        computed, seconds = compute_second_moments(lm, missing, corpus_texts(lm, corpus, tokens, seed), tokens)
        cached |= computed
        write_stats(folder, lm, cached, {"corpus": corpus, "tokens": tokens, "seed": seed, "seconds": seconds})
    return {layer: cached[layer] for layer in layers}


@torch.no_grad()
def compute_second_moments(
    lm: LanguageModel, layers: Sequence[int], texts: Sequence[str], tokens: int, batch_size: int = 16
) -> tuple[dict[int, torch.Tensor], float]:
    """E[k kᵀ] over the first `tokens` tokens of `texts`, and the seconds it took (a progress bar shows it)."""
    started = time.perf_counter()
    sums = {layer: torch.zeros(key_dim(lm), key_dim(lm), dtype=torch.float64) for layer in layers}
    mask_now: list[torch.Tensor] = []

    top = max(layers)

    def hook(layer: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def add(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            keys = args[0][mask_now[0].bool()].double()
            sums[layer].addmm_(keys.T, keys)
            if layer == top:
                raise StopForward  # the layers above the highest edited one are not needed

        return add

    mlps = lm.model.model.layers
    handles = [mlps[layer].mlp.down_proj.register_forward_pre_hook(hook(layer)) for layer in layers]
    encoded = [lm.tokenizer(t, add_special_tokens=True)["input_ids"][:SEQ_TOKENS] for t in texts]
    seen = 0
    try:
        with tqdm(total=tokens, desc="key statistics", unit="tok") as bar:
            for start in range(0, len(encoded), batch_size):
                chunk = [ids[: tokens - seen] for ids in encoded[start : start + batch_size]]
                chunk = [ids for ids in chunk if ids]
                if not chunk:
                    break
                ids, mask, positions = left_padded(lm, chunk)
                mask_now[:] = [mask]
                with contextlib.suppress(StopForward):
                    lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                count = int(mask.sum())
                seen += count
                bar.update(count)
                if seen >= tokens:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if seen < tokens:
        raise ConfigError(f"the key-statistics corpus gave {seen} tokens, fewer than parametric.stats_tokens={tokens}")
    return {layer: (total / seen).float() for layer, total in sums.items()}, time.perf_counter() - started


class StopForward(Exception):
    """Ends a forward pass once the highest layer asked for has given its keys."""


def corpus_texts(lm: LanguageModel, corpus: str, tokens: int, seed: int) -> list[str]:
    """Enough text for `tokens` tokens (with a margin for sequences cut at SEQ_TOKENS)."""
    if corpus == "synthetic":
        from memos_lab.data.synthetic import generate_dialogues

        texts: list[str] = []
        count = 0
        rounds = 0
        while count < tokens * 1.2:
            for conversation in generate_dialogues(
                seed=seed + rounds, n_conversations=8, n_sessions=8, turns_per_session=16
            ):
                for session in conversation.sessions:
                    text = " ".join(f"{t.speaker}: {t.text}" for t in session.turns)
                    texts.append(text)
                    count += min(SEQ_TOKENS, len(lm.tokenizer(text)["input_ids"]))
            rounds += 1
        return texts
    return sampled_texts(lm, n=-(-int(tokens * 1.2) // SEQ_TOKENS), seed=seed)


@torch.no_grad()
def sampled_texts(lm: LanguageModel, n: int, seed: int, batch_size: int = 32) -> list[str]:
    """`n` texts of SEQ_TOKENS tokens sampled from the model (top-k 50) after the OPENINGS, seeded."""
    rng = random.Random(seed)
    openings = [rng.choice(OPENINGS) for _ in range(n)]
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for start in tqdm(range(0, n, batch_size), desc="sampling the statistics corpus", unit="batch"):
        prompts = [lm.tokenizer(o, add_special_tokens=True)["input_ids"] for o in openings[start : start + batch_size]]
        ids, mask, positions = left_padded(lm, prompts)
        past, out_ids = None, []
        for _ in range(SEQ_TOKENS - ids.shape[1]):
            out = lm.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            top = out.logits[:, -1].topk(50)
            choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
            ids = top.indices.gather(-1, choice)
            out_ids.append(ids)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            positions = positions[:, -1:] + 1
        body = torch.cat(out_ids, dim=1).tolist()
        texts += [
            o + cast(str, lm.tokenizer.decode(b, skip_special_tokens=True))
            for o, b in zip(openings[start:], body, strict=False)
        ]
    return texts


# The cache is one artifact per model, corpus and size (memos_lab/artifact/: manifest, sha256, fingerprint).
KIND = "key_stats"
TENSORS = "stats.safetensors"


class StatsMeta(TypedDict):
    layers: list[int]
    corpus: str
    tokens: int
    seed: int
    seconds: float


def read_stats(folder: Path, lm: LanguageModel) -> dict[int, torch.Tensor]:
    """The cached layers in `folder` ({} when nothing is cached); IncompatibleError when they were made with
    another model, DataError for a damaged cache."""
    if not (folder / MANIFEST).is_file():
        return {}
    artifact = read_artifact(folder, KIND, fingerprint=lm.fingerprint())
    artifact.check_meta(StatsMeta)
    tensors = artifact.read_tensors(TENSORS)
    d = key_dim(lm)
    moments = {}
    for layer in artifact.meta["layers"]:
        moment = tensors.get(f"layer_{layer}")
        if moment is None or moment.shape != (d, d) or not torch.isfinite(moment).all():
            raise DataError(
                f"{folder / TENSORS}: layer {layer} is not a finite {d}x{d} matrix; delete the folder to recompute"
            )
        moments[layer] = moment
    return moments


def write_stats(folder: Path, lm: LanguageModel, moments: dict[int, torch.Tensor], about: dict[str, Any]) -> None:
    payload = save({f"layer_{layer}": m.contiguous() for layer, m in moments.items()})
    meta = {"layers": sorted(moments), **about}
    write_artifact(folder, KIND, meta, files={TENSORS: payload}, fingerprint=lm.fingerprint())
