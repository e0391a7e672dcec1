"""Knowledge-editing metrics (EasyEdit / CounterFact definitions), as pure functions on decoded outputs.

Rates are fractions in [0, 1], as every memos_lab rate is (the editing literature prints them as percentages).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def starts_with_target(continuation: str, target: str) -> bool:
    """The continuation starts with the target (what follows it does not matter: greedy decoding runs on).

    Whitespace runs are collapsed and leading whitespace ignored; case matters (names are edits)."""
    goal = " ".join(target.split())
    return bool(goal) and " ".join(continuation.split()).startswith(goal)


def unchanged(base_ids: Sequence[int], edited_ids: Sequence[int]) -> bool:
    """Locality of one probe: the edited model's greedy continuation is the base model's, token for token."""
    return list(base_ids) == list(edited_ids)


def token_agreement(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """EasyEdit's token-level score of one prompt: the share of teacher-forced positions whose argmax is the
    expected token (the target for reliability / generalisation, the base model's argmax for locality)."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError(
            f"token_agreement needs two equally long, non-empty sequences ({len(predicted)}, {len(expected)})"
        )
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def more_likely(logprob_new: float, logprob_old: float) -> bool:
    """Probability-based success (CounterFact's efficacy score): the new target beats the old one."""
    return logprob_new > logprob_old


def rate(flags: Sequence[bool]) -> float:
    """Share of true flags in [0, 1]; NaN when there is nothing to rate (the metric does not apply)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else float("nan")


def ngram_entropy(
    tokens: Sequence[object], ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """ROME's fluency score of one generation: the weighted mean of the entropies (bits) of its n-gram
    frequency distributions; a generation that repeats itself scores low. 0 for fewer than 2 tokens."""
    scores = []
    for n, weight in zip(ns, weights, strict=True):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        scores.append(weight * entropy)
    return sum(scores) / len(scores)
