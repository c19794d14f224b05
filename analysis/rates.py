"""Proportions with their 95% intervals, and the fakeness score of a read (spec: analysis.md)."""

import math

import numpy as np
from scipy.stats import beta, norm

Z95 = float(norm.ppf(0.975))


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's (1927) score interval; None for 0 trials (undefined)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The exact (Clopper-Pearson 1934) interval from beta quantiles; None for 0 trials."""
    if n == 0:
        return None
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return low, high


def fakeness_score(label: str, confidence: int | None) -> float:
    """How strongly a read says "fake": real 5..1 -> 1..5, unsure 6, fake 1..5 -> 7..11.

    Without a confidence: real 0, unsure 0.5, fake 1.
    """
    if confidence is None:
        return {"real": 0.0, "unsure": 0.5, "fake": 1.0}[label]
    if not 1 <= confidence <= 5:
        raise ValueError(f"confidence {confidence} is outside 1..5")
    return {"real": 6.0 - confidence, "unsure": 6.0, "fake": 6.0 + confidence}[label]


def fakeness_bins(label, confidence, has_confidence: bool):
    """The fakeness score of many reads as bins in increasing order of score.

    Labels are codes (0 real, 1 fake, 2 unsure). With confidences, bin b is the
    score b + 1 (1..11); without, bins 0, 1, 2 are the scores 0, 0.5, 1.
    """
    label, confidence = np.asarray(label), np.asarray(confidence)
    real, unsure = label == 0, label == 2
    if has_confidence:
        return np.select([real, unsure], [5 - confidence, 5], default=5 + confidence)
    return np.select([real, unsure], [0, 1], default=2)
