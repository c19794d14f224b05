"""Agreement coefficients against published worked examples and statsmodels, sklearn, krippendorff."""

import numpy as np
import pytest

from analysis.agreement import (
    Undefined,
    cohen_kappa,
    cohen_kappas,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
)

# Fleiss JL (1971), "Measuring nominal scale agreement among many raters", Psychological
# Bulletin 76: 378-382, Table 1: 30 patients, 6 psychiatrists each, 5 diagnoses (depression,
# personality disorder, schizophrenia, neurosis, other); counts of raters per diagnosis.
FLEISS_1971 = np.array(
    [
        [0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0],
        [2, 0, 4, 0, 0], [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6],
        [1, 0, 0, 5, 0], [1, 1, 0, 4, 0], [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1],
        [0, 0, 5, 0, 1], [3, 0, 0, 1, 2], [5, 1, 0, 0, 0], [0, 2, 0, 4, 0], [1, 0, 2, 0, 3],
        [0, 0, 0, 0, 6], [0, 1, 0, 5, 0], [0, 2, 0, 1, 3], [2, 0, 0, 4, 0], [1, 0, 0, 4, 1],
        [0, 5, 0, 1, 0], [4, 0, 0, 0, 2], [0, 2, 0, 4, 0], [1, 0, 5, 0, 0], [0, 0, 0, 0, 6],
    ]
)  # fmt: skip

# Krippendorff K (2011), "Computing Krippendorff's alpha-reliability", Annenberg School for
# Communication, section C ("nominal data, any number of observers, missing data"): 4 observers,
# 12 units, values 1..5, None where an observer did not rate; nominal alpha = 0.743. Gwet KL
# (2014), Handbook of Inter-Rater Reliability, 4th ed., uses the same 12 x 4 data ("cac.raw4raters"
# of his irrCAC package) for AC1 = 0.7754 with percent agreement 0.8182 and chance agreement 0.1903.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def counts_of(ratings, categories) -> np.ndarray:
    """observers x units ratings (None for missing) -> units x categories counts."""
    out = np.zeros((len(ratings[0]), len(categories)))
    for observer in ratings:
        for unit, value in enumerate(observer):
            if value is not None:
                out[unit, categories.index(value)] += 1
    return out


def test_fleiss_kappa_of_fleiss_1971_is_0_430_with_the_fleiss_nee_landis_z():
    result = fleiss_kappa(FLEISS_1971)
    assert result.kappa == pytest.approx(0.430, abs=5e-4)
    # Per-category kappas as in Fleiss (1971) and R's irr::kappam.fleiss(diagnoses, detail=TRUE);
    # z = 17.652 there, from the null variance of Fleiss, Nee & Landis (1979).
    assert result.per_category == pytest.approx([0.245, 0.245, 0.520, 0.471, 0.566], abs=5e-4)
    assert result.z == pytest.approx(17.652, abs=5e-4)
    assert result.p < 1e-60
    assert (result.n_units, result.n_raters) == (30, 6)


def test_fleiss_kappa_agrees_with_statsmodels():
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

    rng = np.random.default_rng(3)
    for _ in range(20):
        table = rng.multinomial(7, rng.dirichlet([1, 1, 1]), size=40)
        assert fleiss_kappa(table).kappa == pytest.approx(statsmodels_fleiss(table), abs=1e-12)


def test_fleiss_kappa_is_undefined_without_variation_or_cases():
    with pytest.raises(Undefined, match="no variation"):
        fleiss_kappa([[0, 4, 0]] * 5)
    with pytest.raises(Undefined, match="no image"):
        fleiss_kappa(np.zeros((0, 3)))
    with pytest.raises(Undefined, match="fewer than two"):
        fleiss_kappa([[1, 0, 0], [0, 1, 0]])


def test_a_category_never_used_has_no_kappa_of_its_own():
    result = fleiss_kappa([[3, 0, 0], [0, 3, 0], [2, 1, 0], [1, 2, 0]])
    assert result.per_category[2] is None
    assert result.per_category[0] == pytest.approx(result.per_category[1])  # two used categories mirror


def test_krippendorffs_alpha_of_his_2011_example_is_0_743():
    counts = counts_of(KRIPPENDORFF_2011, [1, 2, 3, 4, 5])
    assert krippendorff_alpha(counts) == pytest.approx(0.743, abs=5e-4)


def test_alpha_agrees_with_the_krippendorff_package_with_missing_reads():
    import krippendorff

    rng = np.random.default_rng(5)
    for _ in range(20):
        ratings = rng.integers(0, 3, size=(6, 50)).astype(float)
        ratings[rng.random(ratings.shape) < 0.3] = np.nan
        expected = krippendorff.alpha(
            reliability_data=ratings, level_of_measurement="nominal", value_domain=[0, 1, 2]
        )
        listed = [[None if np.isnan(v) else int(v) for v in row] for row in ratings]
        assert krippendorff_alpha(counts_of(listed, [0, 1, 2])) == pytest.approx(expected, abs=1e-12)


def test_gwets_ac1_and_percent_agreement_of_his_four_rater_example():
    counts = counts_of(KRIPPENDORFF_2011, [1, 2, 3, 4, 5])
    assert gwet_ac1(counts) == pytest.approx(0.7754, abs=5e-5)
    assert percent_agreement(counts) == pytest.approx(0.8182, abs=5e-5)


def test_ac1_of_two_raters_reduces_to_gwets_two_rater_formula():
    # Gwet (2008), "Computing inter-rater reliability and its variance in the presence of high
    # agreement", Br J Math Stat Psychol 61: 29-48, eq. for two raters and two categories:
    # p_e = 2 pi (1 - pi), pi the mean of the raters' shares of "yes". On the 50 proposals of the
    # Wikipedia example below: p_o = 0.7, pi = (25/50 + 30/50) / 2 = 0.55, p_e = 0.495,
    # AC1 = (0.7 - 0.495) / (1 - 0.495) = 0.405941.
    counts = np.array([[2, 0]] * 20 + [[1, 1]] * 15 + [[0, 2]] * 15)
    assert gwet_ac1(counts) == pytest.approx(0.205 / 0.505, abs=1e-12)


def test_ac1_is_one_when_every_read_agrees_on_one_label():
    # AC1's chance agreement is 0 there, so unlike kappa and alpha it stays defined.
    assert gwet_ac1([[0, 3, 0]] * 4, q=3) == 1.0
    with pytest.raises(Undefined, match="no variation"):
        krippendorff_alpha([[0, 3, 0]] * 4)


def test_agreement_needs_an_image_with_two_reads():
    for coefficient in (krippendorff_alpha, percent_agreement, gwet_ac1):
        with pytest.raises(Undefined, match="two reads"):
            coefficient([[1, 0, 0], [0, 1, 0]])


# Cohen's kappa: the two-rater tables of the Wikipedia article "Cohen's kappa" (worked example,
# 50 grant proposals: kappa 0.4) and its "same agreement, different kappa" pair (0.1304, 0.2593).
@pytest.mark.parametrize(
    "table, expected",
    [
        ([[20, 5], [10, 15]], 0.4),
        ([[45, 15], [25, 15]], 0.1304),
        ([[25, 35], [5, 35]], 0.2593),
    ],
)
def test_cohens_kappa_of_published_tables(table, expected):
    assert cohen_kappa(table) == pytest.approx(expected, abs=5e-5)


def test_cohens_kappa_when_one_reader_never_uses_a_category():
    # Reader A says unsure on 6 images, reader B never does (rows A, columns B: real, fake, unsure).
    # By hand: p_o = 38/56; A's margins 23, 27, 6 and B's 29, 27, 0 give
    # p_e = (23*29 + 27*27 + 6*0) / 56^2 = 1396/3136; kappa = (38*56 - 1396) / (3136 - 1396) = 0.420690.
    table = np.array([[18, 5, 0], [7, 20, 0], [4, 2, 0]])
    a = [0] * 23 + [1] * 27 + [2] * 6
    b = [0] * 18 + [1] * 5 + [0] * 7 + [1] * 20 + [0] * 4 + [1] * 2
    assert np.array_equal(np.histogram2d(a, b, bins=[range(4), range(4)])[0], table)
    assert cohen_kappa(table) == pytest.approx(0.420690, abs=5e-7)

    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import cohens_kappa

    assert cohen_kappa(table) == pytest.approx(cohen_kappa_score(a, b, labels=[0, 1, 2]), abs=1e-12)
    assert cohen_kappa(table) == pytest.approx(cohens_kappa(table).kappa, abs=1e-12)


def test_cohens_kappa_is_undefined_without_variation_or_shared_images():
    with pytest.raises(Undefined, match="one label only"):
        cohen_kappa([[0, 0, 0], [0, 9, 0], [0, 0, 0]])
    with pytest.raises(Undefined, match="no image read by both"):
        cohen_kappa(np.zeros((3, 3)))
    values, reasons = cohen_kappas(np.stack([np.eye(3) * 4, np.zeros((3, 3))]))
    assert values[0] == 1.0 and np.isnan(values[1]) and reasons == [None, "no image read by both"]
