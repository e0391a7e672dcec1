"""Knowledge-editing metrics on cases small enough to check by hand."""

import math

import pytest

from memos_lab.eval.editing import more_likely, rate, starts_with_target, token_agreement, unchanged


def test_starts_with_target_ignores_leading_and_repeated_whitespace():
    assert starts_with_target(" Copenhagen, the capital", "Copenhagen")
    assert starts_with_target("\n Buenos   Aires is big", "Buenos Aires")
    assert starts_with_target("Paris", "Paris")


def test_starts_with_target_rejects_other_answers_and_empty_targets():
    assert not starts_with_target(" the city of Copenhagen", "Copenhagen")  # said, but not first
    assert not starts_with_target(" copenhagen", "Copenhagen")  # case matters for names
    assert not starts_with_target(" Cop", "Copenhagen")  # cut short
    assert not starts_with_target(" anything", "   ")


def test_unchanged_compares_token_for_token():
    assert unchanged([1, 2, 3], (1, 2, 3))
    assert not unchanged([1, 2, 3], [1, 2, 4])
    assert not unchanged([1, 2], [1, 2, 3])


def test_more_likely_is_strict():
    assert more_likely(-1.0, -2.0)
    assert not more_likely(-2.0, -1.0)
    assert not more_likely(-1.0, -1.0)


def test_rate_is_a_percentage_and_nan_when_empty():
    assert rate([True, False, True, True]) == 0.75
    assert rate([False]) == 0.0
    assert math.isnan(rate([]))


def test_token_agreement_is_the_share_of_matching_positions_and_refuses_mismatched_lengths():
    assert token_agreement([1, 2, 3, 4], [1, 9, 3, 9]) == 0.5
    assert token_agreement([7], [7]) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        token_agreement([1, 2], [1])
    with pytest.raises(ValueError, match="non-empty"):
        token_agreement([], [])
