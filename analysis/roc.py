"""Mann-Whitney AUC: how well a score ranks positives above negatives, ties counting half."""

import numpy as np
from scipy.stats import rankdata


def mann_whitney_auc(positive, negative) -> float | None:
    """P(score of a random positive > score of a random negative) + 0.5 P(tie).

    None when either group is empty: the AUC is undefined there.
    """
    pos = np.asarray(positive, dtype=float).ravel()
    neg = np.asarray(negative, dtype=float).ravel()
    if pos.size == 0 or neg.size == 0:
        return None
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: a tie counts half
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def auc_from_histograms(positive, negative) -> float | None:
    """The same AUC from counts of each score, bins in increasing order of score.

    Reads take a handful of scores (the fakeness score has 11 or 3 values), so a
    reader's AUC is a few sums over bins instead of a ranking of every read.
    """
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
