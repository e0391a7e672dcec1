"""QA metrics on cases small enough to check by hand."""

import pytest

from memos_lab.data.schema import ADVERSARIAL, MULTI_HOP, OPEN_DOMAIN, SINGLE_HOP, TEMPORAL, UNANSWERABLE
from memos_lab.eval.qa import (
    QAScore,
    bleu1,
    declines,
    exact_match,
    multi_answer_f1,
    normalize_answer,
    score_answer,
    token_f1,
)  # fmt: skip
from memos_lab.eval.stats import bootstrap_ci


def test_normalisation_drops_case_punctuation_and_articles():
    assert normalize_answer("The  Eiffel-Tower, and a Café!") == "eiffeltower café"
    assert normalize_answer("An apple") == "apple"
    assert normalize_answer("theatre") == "theatre"  # "the" only as a word


@pytest.mark.parametrize(
    "prediction, gold, f1",
    [
        ("Lisbon", "Lisbon", 1.0),
        ("She lives in Lisbon", "Lisbon", 0.4),  # p = 1/4, r = 1 -> 2 * .25 / 1.25
        ("March 2022", "in March 2022", 0.8),  # p = 1, r = 2/3 -> 0.8
        ("Oslo", "Lisbon", 0.0),
        ("", "Lisbon", 0.0),
        ("the", "a", 1.0),  # both normalise to nothing
    ],
)
def test_token_f1(prediction, gold, f1):
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_multi_answer_f1_matches_each_gold_part_to_its_best_predicted_part():
    # gold parts "pottery", "chess": "pottery" matches exactly (1.0), "chess" nowhere (0.0) -> 0.5
    assert multi_answer_f1("pottery, knitting", "pottery, chess") == pytest.approx(0.5)
    assert multi_answer_f1("chess, pottery", "pottery, chess") == pytest.approx(1.0)


def test_exact_match():
    assert exact_match("The dog.", "dog") == 1.0
    assert exact_match("a dog", "dogs") == 0.0


@pytest.mark.parametrize("answer", ["Not mentioned.", "There is no information about that.", "I don’t know"])
def test_declining_answers_are_credited_for_unanswerable_questions(answer):
    assert declines(answer)
    for category in (UNANSWERABLE, ADVERSARIAL):
        assert score_answer(answer, "not mentioned", category) == QAScore(1.0, 1.0, 1.0)


def test_a_guess_on_an_unanswerable_question_scores_zero():
    assert score_answer("Her grandmother is Rosa", "not mentioned", UNANSWERABLE) == QAScore(0.0, 0.0, 0.0)
    assert not declines("Rosa")


def test_score_answer_per_category():
    assert score_answer("Lisbon", "Lisbon", SINGLE_HOP) == QAScore(1.0, 1.0, 1.0)
    assert score_answer("in May 2023", "May 2023", TEMPORAL).f1 == pytest.approx(0.8)
    assert score_answer("pottery, knitting", "pottery, chess", MULTI_HOP).f1 == pytest.approx(0.5)
    # Open-domain gold lists alternatives after ';', the first counts.
    assert score_answer("hiking", "hiking; walking in the hills", OPEN_DOMAIN) == QAScore(1.0, 1.0, 1.0)
    # A declining answer to an answerable question is simply wrong.
    assert score_answer("not mentioned", "Lisbon", SINGLE_HOP) == QAScore(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "prediction, gold, bleu",
    [
        ("Lisbon", "Lisbon", 1.0),
        # 4 predicted tokens, 1 matches; longer than the gold, so no brevity penalty: 1/4
        ("She lives in Lisbon", "Lisbon", 0.25),
        # 1 token against 3 ("in March 2022" -> in, march, 2022): p = 1, penalty exp(1 - 3/1) = e^-2
        ("March", "in March 2022", 0.1353352832),
        # repeated words count only as often as the gold has them: "dog dog" vs "dog": p = 1/2
        ("dog dog", "dog", 0.5),
        ("Oslo", "Lisbon", 0.0),
        ("", "Lisbon", 0.0),
    ],
)
def test_bleu1(prediction, gold, bleu):
    assert bleu1(prediction, gold) == pytest.approx(bleu)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [0.0] * 50 + [1.0] * 50
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)
    # the mean of 100 fair coin flips: standard error 0.05, so the 95% interval is about 0.5 ± 0.1
    assert 0.38 < low < 0.45 and 0.55 < high < 0.62
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
