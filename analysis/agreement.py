"""Agreement between readers on nominal labels: alpha, Fleiss' kappa, Gwet's AC1, Cohen's kappa.

Every coefficient here takes counts, not raw labels: `counts[u, k]` is how many
readers gave category k to image (unit) u, with as many columns as declared
categories, used or not. A coefficient that the data do not define raises
`Undefined` with the reason, which the summary writes in its `note` column.
"""

import math
from dataclasses import dataclass

import numpy as np


class Undefined(ValueError):
    """The data do not define this figure; the message says why."""


def _as_counts(counts) -> np.ndarray:
    array = np.asarray(counts, dtype=float)
    if array.ndim != 2:
        raise ValueError("counts must be a units x categories table")
    return array


def _paired_units(counts) -> tuple[np.ndarray, np.ndarray]:
    """The units with at least two ratings (the only ones that say anything about agreement)."""
    array = _as_counts(counts)
    m = array.sum(axis=1)
    keep = m >= 2
    if not keep.any():
        raise Undefined("no image has two reads")
    return array[keep], m[keep]


def percent_agreement(counts) -> float:
    """Mean, over units with two or more ratings, of the share of agreeing pairs of ratings."""
    array, m = _paired_units(counts)
    return float(np.mean((array * (array - 1)).sum(axis=1) / (m * (m - 1))))


def krippendorff_alpha(counts) -> float:
    """Krippendorff's alpha for nominal data, missing ratings allowed (Krippendorff 2011).

    From the coincidence matrix of the pairable values: D_o = 1 - sum_c o_cc / n and
    D_e = 1 - sum_c n_c (n_c - 1) / (n (n - 1)), alpha = 1 - D_o / D_e.
    """
    array, m = _paired_units(counts)
    n = m.sum()
    o_cc = (array * (array - 1) / (m - 1)[:, None]).sum(axis=0)
    n_c = array.sum(axis=0)  # the margins of the coincidence matrix
    d_o = 1 - o_cc.sum() / n
    d_e = 1 - (n_c * (n_c - 1)).sum() / (n * (n - 1))
    if d_e <= 0:
        raise Undefined("every read has the same label: no variation")
    return float(1 - d_o / d_e)


@dataclass(frozen=True)
class Fleiss:
    """Fleiss' kappa with its test under H0 (kappa = 0) and the kappa of each category."""

    kappa: float
    z: float | None
    p: float | None
    per_category: list[float | None]
    n_units: int
    n_raters: int


def fleiss_kappa(counts) -> Fleiss:
    """Fleiss' (1971) kappa for units all rated by the same number m >= 2 of raters.

    z and the two-sided p come from the standard error under H0 of Fleiss, Nee and
    Landis (1979): Var0 = 2 / (S^2 N m (m - 1)) * (S^2 - sum_j p_j q_j (q_j - p_j)),
    S = sum_j p_j q_j. The kappa of category j is 1 - sum_i n_ij (m - n_ij) /
    (N m (m - 1) p_j q_j), undefined (None) for a category never or always used.
    """
    array = _as_counts(counts)
    if array.shape[0] == 0:
        raise Undefined("no image was read by every reader")
    m_per_unit = array.sum(axis=1)
    m = float(m_per_unit[0])
    if m_per_unit.min() != m_per_unit.max():
        raise ValueError("Fleiss' kappa needs the same number of ratings on every unit")
    if m < 2:
        raise Undefined("fewer than two readers")
    n_units = array.shape[0]
    squares = np.einsum("ij,ij->j", array, array)  # sum_i n_ij^2 per category, in one pass
    p = array.sum(axis=0) / (n_units * m)
    agreement = (squares.sum() - n_units * m) / (n_units * m * (m - 1))
    chance = float((p * p).sum())
    if chance >= 1:
        raise Undefined("every read has the same label: no variation")
    kappa = float((agreement - chance) / (1 - chance))
    pq = p * (1 - p)
    s = pq.sum()
    var0 = 2 / (s * s * n_units * m * (m - 1)) * (s * s - (pq * ((1 - p) - p)).sum())
    z = kappa / np.sqrt(var0) if var0 > 0 else None
    # sum_i n_ij (m - n_ij) = m * (column total) - sum_i n_ij^2
    disagreement = m * p * n_units * m - squares
    per_category = [
        float(1 - disagreement[j] / (n_units * m * (m - 1) * pq[j])) if pq[j] > 0 else None
        for j in range(array.shape[1])
    ]
    return Fleiss(
        kappa=kappa,
        z=None if z is None else float(z),
        p=None if z is None else math.erfc(abs(z) / math.sqrt(2)),  # two-sided normal tail
        per_category=per_category,
        n_units=n_units,
        n_raters=int(m),
    )


def gwet_ac1(counts, q: int | None = None) -> float:
    """Gwet's AC1 for many raters with missing ratings (Gwet 2014, ch. 4), q categories.

    p_a is the percent agreement over units with two or more ratings; the chance
    agreement p_e = sum_k pi_k (1 - pi_k) / (q - 1), with pi_k the mean over every
    rated unit of the share of its ratings in category k.
    """
    array = _as_counts(counts)
    q = array.shape[1] if q is None else q
    if q < 2:
        raise ValueError("AC1 needs at least two categories")
    p_a = percent_agreement(array)
    r = array.sum(axis=1)
    rated = array[r >= 1] / r[r >= 1][:, None]
    pi = rated.mean(axis=0)
    p_e = float((pi * (1 - pi)).sum() / (q - 1))
    return float((p_a - p_e) / (1 - p_e))


def cohen_kappas(tables) -> tuple[np.ndarray, list[str | None]]:
    """Cohen's (1960) kappa of many q x q tables (shape (..., q, q)) at once.

    Returns the kappas (NaN where undefined) and, flattened, the reason for each NaN.
    """
    t = np.asarray(tables, dtype=float)
    n = t.sum(axis=(-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = np.trace(t, axis1=-2, axis2=-1) / n
        chance = (t.sum(axis=-1) * t.sum(axis=-2)).sum(axis=-1) / (n * n)
        kappa = (observed - chance) / (1 - chance)
    empty = n == 0
    constant = ~empty & (chance >= 1 - 1e-12)
    kappa = np.where(empty | constant, np.nan, kappa)
    reasons = np.where(
        empty.ravel(), "no image read by both", np.where(constant.ravel(), "one label only: no variation", "")
    )
    return kappa, [reason or None for reason in reasons.tolist()]


def cohen_kappa(table) -> float:
    """Cohen's kappa of one q x q table (rows: one rater, columns: the other)."""
    kappa, reasons = cohen_kappas(table)
    if reasons[0]:
        raise Undefined(reasons[0])
    return float(kappa)
