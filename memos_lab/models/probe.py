"""Raw-text probing of a causal LM: greedy continuations and the log-probability of a given continuation.

Knowledge-edit prompts are sentence prefixes ("X lives in the city of"), so they are fed as plain text,
not through the chat template. A target is always encoded as " " + target after the prompt's own ids, the
same split for training and scoring, so a learned target is exactly what greedy decoding reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import torch

from memos_lab.errors import DataError
from memos_lab.models.decode import greedy_batch, left_padded
from memos_lab.models.llm import LanguageModel


def encode_prompt(lm: LanguageModel, prompt: str) -> list[int]:
    ids = lm.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise DataError(f"prompt {prompt!r} encodes to no tokens")
    return [int(i) for i in ids]


def encode_target(lm: LanguageModel, target: str) -> list[int]:
    """Ids of " " + target; DataError when the tokenizer cannot represent it faithfully."""
    if not target.strip():
        raise DataError("empty target")
    ids = [int(i) for i in lm.tokenizer(" " + target, add_special_tokens=False)["input_ids"]]
    special = set(lm.tokenizer.all_special_ids)  # includes the unknown token, where there is one
    decoded = cast(str, lm.tokenizer.decode(ids, skip_special_tokens=False)).strip()  # one sequence: one str
    if not ids or special & set(ids) or decoded != target.strip():
        raise DataError(f"target {target!r} cannot be encoded by the {lm.name} tokenizer (decodes to {decoded!r})")
    return ids


def greedy_continuations(
    lm: LanguageModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32
) -> list[list[int]]:
    """The greedy continuation ids of each raw-text prompt (exactly max_new_tokens each: no stop token)."""
    encoded = [encode_prompt(lm, p) for p in prompts]
    return greedy_batch(lm, encoded, max_new_tokens, stop=False, batch_size=batch_size).token_ids


def target_logprobs(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32
) -> list[float]:
    """Sum of log P(token) over the ids of " " + target, teacher-forced after each prompt."""
    return [
        float(logprobs.gather(-1, torch.tensor(target, device=logprobs.device)[:, None]).sum())
        for logprobs, target in _teacher_forced(lm, prompts, targets, batch_size)
    ]


def target_argmax(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32
) -> list[tuple[list[int], list[int]]]:
    """Per prompt: the model's argmax at each position of " " + target, teacher-forced, and the target's ids
    (EasyEdit scores edits, and their locality, by these token-level predictions)."""
    return [
        ([int(i) for i in logprobs.argmax(-1)], target)
        for logprobs, target in _teacher_forced(lm, prompts, targets, batch_size)
    ]


@torch.no_grad()
def _teacher_forced(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], batch_size: int
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Per prompt: the log-probabilities (target length x vocabulary) predicting each token of " " + target
    after it, and those target ids."""
    pairs = [(encode_prompt(lm, p), encode_target(lm, t)) for p, t in zip(prompts, targets, strict=True)]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids, mask, positions = left_padded(lm, [p + t for p, t in chunk])
        logprobs = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.log_softmax(-1)
        width = ids.shape[1]
        for row, (_, target) in enumerate(chunk):
            # the logits at position i predict token i + 1
            yield logprobs[row, width - len(target) - 1 : width - 1], target
