"""Answer-quality metrics, LoCoMo style (Maharana et al. 2024): token F1, BLEU-1 and exact match after
normalisation.

Normalisation lower-cases, drops commas and punctuation, the articles and "and", and collapses spaces
(LoCoMo also Porter-stems tokens; we do not, so scores can be a little lower on inflected answers).
Multi-hop gold answers are comma-separated parts, each matched by its best part of the prediction.
For questions whose answer is not in the memory (unanswerable, adversarial) an answer that declines
scores 1 and any other answer 0, on every metric.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass

from memos_lab.data.schema import MULTI_HOP, NO_EVIDENCE_CATEGORIES, OPEN_DOMAIN

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# Phrases that decline to answer; LoCoMo's own check accepts "no information available" and "not mentioned".
DECLINE_PHRASES = (
    "not mentioned", "no information", "not specified", "not stated", "not provided", "no mention",
    "unknown", "don't know", "do not know", "cannot answer", "can't answer", "cannot be determined",
    "not enough information", "no record", "not in the memories", "not available",
)  # fmt: skip


@dataclass(frozen=True)
class QAScore:
    f1: float
    em: float
    bleu1: float


def normalize_answer(text: str) -> str:
    text = str(text).lower().replace(",", "")
    text = text.translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """Mean over the gold's comma-separated parts of the best F1 against any part of the prediction."""
    predictions = [part for part in prediction.split(",") if part.strip()] or [prediction]
    golds = [part for part in gold.split(",") if part.strip()] or [gold]
    return sum(max(token_f1(p, g) for p in predictions) for g in golds) / len(golds)


def bleu1(prediction: str, gold: str) -> float:
    """Sentence BLEU with unigram weights only: clipped unigram precision times the brevity penalty,
    over normalised tokens (as nltk's sentence_bleu with weights (1, 0, 0, 0), unsmoothed)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return 0.0
    clipped = sum((Counter(predicted) & Counter(expected)).values())
    brevity = 1.0 if len(predicted) > len(expected) else math.exp(1 - len(expected) / len(predicted))
    return brevity * clipped / len(predicted)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def declines(prediction: str) -> bool:
    text = " ".join(str(prediction).lower().replace("’", "'").split())
    return any(phrase in text for phrase in DECLINE_PHRASES)


def score_answer(prediction: str, gold: str, category: str) -> QAScore:
    """F1 and EM of one answer for a question of the given category (memos_lab.data.schema names)."""
    if category in NO_EVIDENCE_CATEGORIES:
        credit = float(declines(prediction))
        return QAScore(credit, credit, credit)
    gold = str(gold)
    if category == OPEN_DOMAIN:  # LoCoMo lists alternatives after ';' and scores the first
        gold = gold.split(";")[0].strip()
    f1 = multi_answer_f1(prediction, gold) if category == MULTI_HOP else token_f1(prediction, gold)
    return QAScore(f1, exact_match(prediction, gold), bleu1(prediction, gold))
