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
