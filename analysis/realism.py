"""Machine measures of realism on image features: Fréchet distance, KID, precision, recall,
density and coverage, and nearest neighbours (for memorisation).

Pure numpy and scipy, like the rest of `analysis/`: features come in as arrays (one row per
image, from an extractor run elsewhere), figures come out. Every computation over pairs of
images goes by blocks of rows and matrix products, never a loop over images, so that 10,000
against 10,000 images fits in memory. Definitions and sources: docs/analysis.md,
"Machine measures".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 2048  # rows per block of pairwise work: a 2048 x 10,000 float64 block is 160 MB


def _features(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"The {name} features must be a table (images x features), not shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"The {name} features hold NaN or infinite values.")
    return array


def _pair(a, b, names=("real", "synthetic")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(a, names[0]), _features(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"The {names[0]} and {names[1]} features differ in length ({a.shape[1]} and {b.shape[1]}): "
            "they must come from the same extractor."
        )
    return a, b


# ---- Fréchet distance ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStats:
    """The mean and covariance of a set's features: all that the Fréchet distance needs."""

    n: int
    mean: np.ndarray
    cov: np.ndarray


def feature_stats(features) -> FeatureStats:
    """Mean and unbiased covariance (n - 1), as the reference FID implementations compute them."""
    features = _features(features, "image")
    if len(features) < 2:
        raise ValueError(f"A covariance needs at least 2 images; this set has {len(features)}.")
    return FeatureStats(n=len(features), mean=features.mean(axis=0), cov=np.cov(features, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (its tiny negative
    eigenvalues, rounding errors, taken as 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between the Gaussians fitted to two sets (Heusel et al. 2017):

        |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

    The last trace equals tr((S_a S_b)^1/2), computed on a symmetric matrix so that it stays
    real and stable where the covariances are singular (fewer images than features).
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError("The two sets' features differ in length: they must come from the same extractor.")
    root = _sqrt_psd(a.cov)
    middle = root @ b.cov @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov) - 2 * cross)
    return max(value, 0.0)  # a distance: rounding must not make identical sets negative


# ---- KID -------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree=3, gamma=None, coef=1.0) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef)^degree, gamma = 1 / features by default (Bińkowski et al. 2018)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(x, y, *, degree=3, gamma=None, coef=1.0) -> float:
    """The unbiased estimate of the squared MMD with the polynomial kernel (Bińkowski et al.
    2018, eq. 2; Gretton et al. 2012): the within-set means leave out i = j. The sets may differ
    in size. Unbiased, so it can be slightly negative where the sets come from one distribution."""
    x, y = _pair(x, y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 images in each set (got {m} and {n}).")
    kernel = {"degree": degree, "gamma": gamma, "coef": coef}
    k_xx, k_yy = polynomial_kernel(x, x, **kernel), polynomial_kernel(y, y, **kernel)
    k_xy = polynomial_kernel(x, y, **kernel)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


@dataclass(frozen=True)
class KID:
    mean: float  # the mean of the subsets' unbiased estimates: the figure reported as KID
    std: float
    ci_low: float  # 2.5th and 97.5th percentiles of the subsets' estimates
    ci_high: float
    subsets: int
    subset_size: int


def kid(real, synthetic, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0, **kernel) -> KID:
    """Kernel Inception Distance as its authors and torchmetrics report it: the unbiased squared
    MMD on `subsets` random subsets of `subset_size` images of each set (drawn without
    replacement within a subset), their mean and standard deviation, and the interval of
    their middle 95%. A set smaller than `subset_size` gives subsets of its size."""
    real, synthetic = _pair(real, synthetic)
    size = min(subset_size, len(real), len(synthetic))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images in each set (got {len(real)} and {len(synthetic)}).")
    if subsets < 1:
        raise ValueError("KID needs at least one subset.")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                real[rng.choice(len(real), size, replace=False)],
                synthetic[rng.choice(len(synthetic), size, replace=False)],
                **kernel,
            )
            for _ in range(subsets)
        ]
    )
    low, high = np.percentile(values, [2.5, 97.5])
    return KID(
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if subsets > 1 else 0.0,
        ci_low=float(low),
        ci_high=float(high),
        subsets=subsets,
        subset_size=size,
    )


# ---- Precision, recall, density, coverage ----------------------------------------------------


def _distances(x: np.ndarray, y: np.ndarray, x_norms=None, y_norms=None) -> np.ndarray:
    """Euclidean distances between the rows of x and of y, by one matrix product."""
    x_norms = (x * x).sum(axis=1) if x_norms is None else x_norms
    y_norms = (y * y).sum(axis=1) if y_norms is None else y_norms
    squared = x_norms[:, None] + y_norms[None, :] - 2 * (x @ y.T)
    return np.sqrt(np.clip(squared, 0, None))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its k-th nearest other row (the row itself, at 0, not counted)."""
    if not 1 <= k < len(features):
        raise ValueError(f"k must be from 1 to the set's size less one ({len(features) - 1}), not {k}.")
    norms = (features * features).sum(axis=1)
    radii = np.empty(len(features))
    for start in range(0, len(features), BLOCK):
        block = _distances(features[start : start + BLOCK], features, norms[start : start + BLOCK], norms)
        radii[start : start + BLOCK] = np.partition(block, k, axis=1)[:, k]  # index 0: itself
    return radii


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def prdc(real, synthetic, *, k: int = 5) -> PRDC:
    """Precision and recall of the k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019),
    density and coverage (Naeem et al. 2020), as the latter's reference code (`prdc`) computes
    them: a point lies inside a set's manifold where it is strictly closer to one of the set's
    points than that point's k-th nearest neighbour."""
    real, synthetic = _pair(real, synthetic)
    real_radii, synthetic_radii = knn_radii(real, k), knn_radii(synthetic, k)
    real_norms, synthetic_norms = (real * real).sum(axis=1), (synthetic * synthetic).sum(axis=1)
    inside_real = np.zeros(len(synthetic), dtype=bool)  # precision: synthetic within the real manifold
    real_balls = np.zeros(len(synthetic))  # density: how many real balls hold each synthetic image
    covered = np.zeros(len(real), dtype=bool)  # recall: real within the synthetic manifold
    nearest_synthetic = np.full(len(real), np.inf)  # coverage
    for start in range(0, len(real), BLOCK):
        stop = start + BLOCK
        block = _distances(real[start:stop], synthetic, real_norms[start:stop], synthetic_norms)
        within = block < real_radii[start:stop, None]
        inside_real |= within.any(axis=0)
        real_balls += within.sum(axis=0)
        covered[start:stop] = (block < synthetic_radii[None, :]).any(axis=1)
        nearest_synthetic[start:stop] = block.min(axis=1)
    return PRDC(
        precision=float(inside_real.mean()),
        recall=float(covered.mean()),
        density=float(real_balls.mean() / k),
        coverage=float((nearest_synthetic < real_radii).mean()),
        k=k,
    )


# ---- Nearest neighbours ----------------------------------------------------------------------


def nearest_by_cosine(queries, references, *, k: int = 1, centre=None) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the indices of its `k` most similar reference rows (most similar first)
    and their cosine similarities, by blocks of matrix products of the unit-length rows.
    With `centre` (a row), both sides are centred on it first: the cosine of what differs from
    a typical image (the reference set's mean, say) rather than of what every image shares."""
    queries, references = _pair(queries, references, ("queried", "reference"))
    if not len(references):
        raise ValueError("There is no reference image to compare with.")
    requested, k = k, min(k, len(references))
    if centre is not None:
        queries, references = queries - centre, references - centre

    def unit(rows):
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)

    queries, references = unit(queries), unit(references)
    index = np.empty((len(queries), k), dtype=np.int64)
    similarity = np.empty((len(queries), k))
    for start in range(0, len(queries), BLOCK):
        block = queries[start : start + BLOCK] @ references.T
        best = (
            np.argpartition(-block, k - 1, axis=1)[:, :k]
            if k < block.shape[1]
            else np.tile(np.arange(block.shape[1]), (len(block), 1))
        )
        values = np.take_along_axis(block, best, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        index[start : start + BLOCK] = np.take_along_axis(best, order, axis=1)
        similarity[start : start + BLOCK] = np.take_along_axis(values, order, axis=1)
    if requested == 1:
        return index[:, 0], similarity[:, 0]
    return index, similarity  # k columns, fewer where there are fewer references


# ---- Rank correlation across arms ------------------------------------------------------------

EXACT_UP_TO = 8  # arms: every permutation (8! = 40,320) is enumerated up to this many


@dataclass(frozen=True)
class Spearman:
    rho: float
    p: float  # two-sided, against no association
    n: int
    method: str  # "exact permutation" or "t approximation"


def spearman(x, y) -> Spearman:
    """Spearman's rank correlation of paired values (ties get average ranks), with its two-sided p.

    Up to EXACT_UP_TO pairs, p is exact: the share of the n! orderings of y's ranks whose |rho|
    reaches the observed one (ties included). Beyond, the t approximation
    t = rho sqrt((n - 2) / (1 - rho^2)) on n - 2 degrees of freedom (as scipy.stats.spearmanr).
    """
    from itertools import permutations

    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("Spearman's rho needs two equally long lists of values.")
    n = len(x)
    if n < 3:
        raise ValueError(f"Spearman's rho needs at least 3 pairs, not {n}.")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        raise ValueError("Spearman's rho is undefined when every value of one list is the same.")
    cx, cy = rx - rx.mean(), ry - ry.mean()
    scale = np.sqrt((cx**2).sum() * (cy**2).sum())
    rho = float(cx @ cy / scale)
    if n <= EXACT_UP_TO:
        orderings = np.array(list(permutations(cy)))
        every = np.abs(orderings @ cx / scale)
        p = float(np.mean(every >= abs(rho) - 1e-12))
        return Spearman(rho=rho, p=p, n=n, method="exact permutation")
    if abs(rho) >= 1.0:
        return Spearman(rho=rho, p=0.0, n=n, method="t approximation")
    t = rho * np.sqrt((n - 2) / (1 - rho**2))
    return Spearman(rho=rho, p=float(2 * stats.t.sf(abs(t), n - 2)), n=n, method="t approximation")
