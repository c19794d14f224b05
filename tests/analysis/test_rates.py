"""Intervals, the fakeness score and the AUC against published worked examples."""

import pytest

from analysis.rates import clopper_pearson, fakeness_score, wilson
from analysis.roc import auc_from_histograms, mann_whitney_auc

# Newcombe RG (1998), "Two-sided confidence intervals for the single proportion: comparison
# of seven methods", Statistics in Medicine 17: 857-872, Table I: method 3 (Wilson score,
# no continuity correction) and method 5 (Clopper-Pearson exact), to 4 decimals.
NEWCOMBE = [
    # (r, n, Wilson, Clopper-Pearson)
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0000, 0.1611), (0.0000, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize("r, n, expected, _", NEWCOMBE)
def test_wilson_matches_newcombes_table(r, n, expected, _):
    assert wilson(r, n) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("r, n, _, expected", NEWCOMBE)
def test_clopper_pearson_matches_newcombes_table(r, n, _, expected):
    assert clopper_pearson(r, n) == pytest.approx(expected, abs=5e-5)


def test_intervals_are_undefined_without_trials_and_agree_with_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    assert wilson(0, 0) is None and clopper_pearson(0, 0) is None
    for r, n in [(0, 1), (1, 1), (3, 7), (50, 100), (999, 1000)]:
        assert wilson(r, n) == pytest.approx(proportion_confint(r, n, method="wilson"), abs=1e-12)
        assert clopper_pearson(r, n) == pytest.approx(proportion_confint(r, n, method="beta"), abs=1e-9)


def test_the_fakeness_score_orders_every_answer_as_the_spec_says():
    ladder = [("real", c) for c in (5, 4, 3, 2, 1)] + [("unsure", 3)] + [("fake", c) for c in (1, 2, 3, 4, 5)]
    assert [fakeness_score(label, c) for label, c in ladder] == list(range(1, 12))
    assert [fakeness_score(label, None) for label in ("real", "unsure", "fake")] == [0, 0.5, 1]
    with pytest.raises(ValueError, match="outside 1..5"):
        fakeness_score("fake", 6)


def test_the_auc_of_hanley_and_mcneils_ratings_is_0_893():
    # Hanley JA, McNeil BJ (1982), "The meaning and use of the area under a ROC curve",
    # Radiology 143: 29-36, Table 1: CT ratings 1 (definitely normal) .. 5 (definitely abnormal)
    # of 58 normal and 51 abnormal patients; area 0.893 (ties counted half).
    normal = [1] * 33 + [2] * 6 + [3] * 6 + [4] * 11 + [5] * 2
    abnormal = [1] * 3 + [2] * 2 + [3] * 2 + [4] * 11 + [5] * 33
    assert mann_whitney_auc(abnormal, normal) == pytest.approx(0.893, abs=5e-4)
    assert mann_whitney_auc(abnormal, []) is None
    # The same table as counts per rating, as the summary computes it.
    assert auc_from_histograms([3, 2, 2, 11, 33], [33, 6, 6, 11, 2]) == pytest.approx(0.893, abs=5e-4)
    assert auc_from_histograms([3, 2, 2, 11, 33], [0] * 5) is None


def test_the_auc_agrees_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    pos, neg = [0.2, 0.5, 0.5, 0.9, 1.0], [0.1, 0.5, 0.3, 0.3]
    expected = roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)
    assert mann_whitney_auc(pos, neg) == pytest.approx(expected, abs=1e-12)
