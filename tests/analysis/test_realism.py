"""Machine measures on features (analysis/realism.py) against what is known of them.

Sources: closed forms of the Fréchet distance between Gaussians (Dowson & Landau 1982, the
formula of Heusel et al. 2017); torchmetrics 1.9's own FID and KID functions; the reference
code of precision, recall, density and coverage by the authors of Naeem et al. 2020 (`prdc`
0.2, NAVER); scikit-learn's brute-force nearest neighbours.
"""

import numpy as np
import prdc as reference_prdc
import pytest
import torch
from scipy import linalg
from sklearn.neighbors import NearestNeighbors
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from analysis import realism
from analysis.realism import FeatureStats, feature_stats, frechet_distance, kid, mmd2_unbiased, prdc

RNG = np.random.default_rng(20261206)


def stats(mean, cov, n=100):
    return FeatureStats(n=n, mean=np.asarray(mean, float), cov=np.asarray(cov, float))


# ---- Fréchet distance ----------------------------------------------------------------------


def test_identical_sets_are_at_distance_zero():
    features = RNG.normal(size=(300, 16))
    assert frechet_distance(feature_stats(features), feature_stats(features)) == pytest.approx(0, abs=1e-9)


def test_gaussians_with_diagonal_covariances_match_the_closed_form():
    # Commuting covariances: d = |m1 - m2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = RNG.uniform(0.5, 3, 8), RNG.uniform(0.5, 3, 8)
    shift = RNG.normal(size=8)
    expected = np.sum(shift**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(stats(np.zeros(8), np.diag(a)), stats(shift, np.diag(b)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_a_shifted_sample_is_at_the_squared_shift():
    # The same sample moved by `shift`: same covariance, so the distance is exactly |shift|^2.
    features = RNG.normal(size=(500, 10))
    shift = np.arange(10) / 10
    got = frechet_distance(feature_stats(features), feature_stats(features + shift))
    assert got == pytest.approx(np.sum(shift**2), rel=1e-9)


def test_general_covariances_agree_with_scipy_sqrtm_and_torchmetrics():
    x = RNG.normal(size=(400, 12)) @ RNG.normal(size=(12, 12))
    y = RNG.normal(size=(350, 12)) @ RNG.normal(size=(12, 12)) + 0.3
    a, b = feature_stats(x), feature_stats(y)
    by_sqrtm = (
        np.sum((a.mean - b.mean) ** 2)
        + np.trace(a.cov + b.cov)
        - 2 * np.trace(linalg.sqrtm(a.cov @ b.cov).real)
    )
    by_torchmetrics = _compute_fid(*(torch.from_numpy(v) for v in (a.mean, a.cov, b.mean, b.cov))).item()
    assert frechet_distance(a, b) == pytest.approx(by_sqrtm, rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(by_torchmetrics, rel=1e-8)


def test_fewer_images_than_features_still_gives_a_real_finite_distance():
    # Singular covariances (30 images, 64 features): torchmetrics' eigenvalues of a product agree.
    x, y = RNG.normal(size=(30, 64)), RNG.normal(size=(30, 64)) + 0.1
    a, b = feature_stats(x), feature_stats(y)
    by_torchmetrics = _compute_fid(*(torch.from_numpy(v) for v in (a.mean, a.cov, b.mean, b.cov))).item()
    assert frechet_distance(a, b) == pytest.approx(by_torchmetrics, rel=1e-6)


def test_bad_features_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_stats(np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        feature_stats(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="same extractor"):
        frechet_distance(feature_stats(RNG.normal(size=(5, 3))), feature_stats(RNG.normal(size=(5, 4))))


# ---- KID -----------------------------------------------------------------------------------


def test_the_unbiased_mmd_agrees_with_torchmetrics_on_equal_sizes():
    x, y = RNG.normal(size=(60, 20)), RNG.normal(size=(60, 20)) * 1.2 + 0.1
    expected = poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)


def test_the_unbiased_mmd_of_unequal_sizes_matches_its_definition():
    # Gretton et al. 2012, eq. 3: within-set means over i != j, the cross mean over all pairs.
    x, y = RNG.normal(size=(15, 6)), RNG.normal(size=(9, 6)) + 0.5

    def k(a, b):
        return (a @ b / 6 + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
    within_y = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    cross = sum(k(a, b) for a in x for b in y) / (15 * 9)
    assert mmd2_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * cross, rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    base = RNG.normal(size=(400, 16))
    same = kid(base, RNG.normal(size=(400, 16)), subsets=20, subset_size=100)
    near = kid(base, RNG.normal(size=(400, 16)) + 0.3, subsets=20, subset_size=100)
    far = kid(base, RNG.normal(size=(400, 16)) + 1.0, subsets=20, subset_size=100)
    assert same.ci_low < 0 < same.ci_high or abs(same.mean) < 3 * same.std
    assert 0 < near.mean < far.mean and near.ci_high < far.ci_low
    assert (far.subsets, far.subset_size) == (20, 100) and far.ci_low <= far.mean <= far.ci_high


def test_kid_of_one_whole_subset_is_the_mmd_of_the_sets_and_it_is_seeded():
    x, y = RNG.normal(size=(50, 8)), RNG.normal(size=(50, 8)) + 0.2
    whole = kid(x, y, subsets=1, subset_size=50)
    assert whole.mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-10)  # a permutation changes nothing
    assert kid(x, y, subsets=5, subset_size=20, seed=3) == kid(x, y, subsets=5, subset_size=20, seed=3)
    assert kid(x, y, subset_size=1000, subsets=3).subset_size == 50  # sets smaller than a subset


# ---- Precision, recall, density, coverage --------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_agrees_with_the_authors_reference_code(k, monkeypatch):
    real = RNG.normal(size=(240, 10))
    synthetic = RNG.normal(size=(180, 10)) * 0.8 + 0.4
    monkeypatch.setattr(realism, "BLOCK", 64)  # several blocks, as with 10,000 images
    ours = prdc(real, synthetic, k=k)
    theirs = reference_prdc.compute_prdc(real_features=real, fake_features=synthetic, nearest_k=k)
    assert ours.precision == pytest.approx(theirs["precision"], abs=1e-12)
    assert ours.recall == pytest.approx(theirs["recall"], abs=1e-12)
    assert ours.density == pytest.approx(theirs["density"], abs=1e-12)
    assert ours.coverage == pytest.approx(theirs["coverage"], abs=1e-12)
    assert ours.k == k


def test_identical_sets_have_precision_and_recall_one_and_disjoint_sets_zero():
    real = RNG.normal(size=(200, 8))
    same = prdc(real, real.copy(), k=5)
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)
    apart = prdc(real, real + 100, k=5)
    assert (apart.precision, apart.recall, apart.density, apart.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_a_synthetic_set_collapsed_on_part_of_the_real_one_is_precise_but_covers_little():
    real = RNG.normal(size=(300, 4))
    part = real[:, 0] > 1.0  # about a sixth of the real images
    collapsed = real[part] + RNG.normal(scale=0.01, size=(int(part.sum()), 4))
    result = prdc(real, collapsed, k=5)
    assert result.precision == 1.0 and result.coverage < 0.35
    # Recall overstates what is covered (the sparse synthetic set's k-NN balls are wide): the
    # reason Naeem et al. 2020 give coverage beside it.
    assert result.coverage < result.recall < 1


def test_k_beyond_the_set_is_refused():
    with pytest.raises(ValueError, match="k must be from 1"):
        prdc(RNG.normal(size=(5, 3)), RNG.normal(size=(50, 3)), k=5)


# ---- Nearest neighbours --------------------------------------------------------------------


def test_nearest_by_cosine_matches_a_brute_force_search(monkeypatch):
    queries, references = RNG.normal(size=(130, 24)), RNG.normal(size=(300, 24))
    monkeypatch.setattr(realism, "BLOCK", 50)
    index, similarity = realism.nearest_by_cosine(queries, references)
    search = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(references)
    distance, expected = search.kneighbors(queries)
    assert (index == expected[:, 0]).all()
    assert np.allclose(similarity, 1 - distance[:, 0], atol=1e-12)


def test_a_planted_copy_is_its_own_nearest_neighbour():
    references = RNG.normal(size=(200, 32))
    queries = references[[7, 42]] * 1.5 + RNG.normal(scale=0.01, size=(2, 32))  # scaled, lightly noised
    index, similarity = realism.nearest_by_cosine(queries, references)
    assert list(index) == [7, 42] and (similarity > 0.99).all()


# ---- Spearman's rank correlation across arms ----


def test_spearman_matches_wikipedias_worked_example_with_the_t_approximation():
    """Wikipedia, "Spearman's rank correlation coefficient", section "Example": IQ against hours of
    television per week for 10 people gives rho = -29/165 = -0.175757575... and, with the
    t-distribution, p = 0.627188."""
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    found = realism.spearman(iq, tv)
    assert found.rho == pytest.approx(-29 / 165, abs=1e-12)
    assert found.p == pytest.approx(0.627188, abs=1e-6)
    assert (found.n, found.method) == (10, "t approximation")


def test_spearman_is_exact_for_few_arms():
    # Four arms in the same order: 2 of the 4! orderings reach |rho| = 1, so p = 2/24.
    found = realism.spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.3, 0.35, 0.9])
    assert (found.rho, found.p, found.method) == (1.0, pytest.approx(1 / 12), "exact permutation")
    # With ties, against scipy's exact permutation test of the same statistic, |rho|.
    from scipy import stats

    x, y = [3.1, 2.0, 2.0, 5.5, 4.2, 1.0], [0.4, 0.2, 0.5, 0.9, 0.9, 0.1]
    found = realism.spearman(x, y)
    expected = stats.permutation_test(
        (x,),
        lambda a: abs(stats.spearmanr(a, y).statistic),
        permutation_type="pairings",
        alternative="greater",
    )
    assert found.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert found.p == pytest.approx(expected.pvalue, abs=1e-12)


def test_spearman_refuses_what_it_cannot_rank():
    with pytest.raises(ValueError, match="at least 3 pairs"):
        realism.spearman([1, 2], [2, 1])
    with pytest.raises(ValueError, match="every value of one list is the same"):
        realism.spearman([1, 2, 3], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="equally long"):
        realism.spearman([1, 2, 3], [1, 2])
