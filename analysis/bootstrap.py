"""The two-way bootstrap of pooled accuracy: resample readers, then images within truth class.

A replicate draws the group's readers with replacement, then, within each truth
class, as many images as the class has, with replacement. Its accuracy is every
read of a drawn reader on a drawn image, counted as often as both were drawn:
with w the readers' draw counts and v the images', correct reads w.C.v over reads
w.N.v, where C and N are the readers x images tables of correct and of all reads.
Written that way, B replicates are two matrix products instead of B passes over
the reads.
"""

import zlib

import numpy as np

CHUNK = 64  # replicates per matrix product: bounds memory, leaves the draws unchanged


def group_rng(seed: int, group: str) -> np.random.Generator:
    """The random stream of one group: the same seed and group name give the same draws,
    whatever other groups the study has."""
    return np.random.default_rng([int(seed), zlib.crc32(group.encode("utf-8"))])


def draw_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each of n items is drawn in n draws with replacement."""
    return np.bincount(rng.integers(0, n, size=n), minlength=n)


def two_way_bootstrap(correct, reads, strata, *, replicates: int, rng: np.random.Generator):
    """The accuracies of `replicates` two-way bootstrap replicates (NaN where a replicate drew no read).

    correct, reads: readers x images arrays; strata: index arrays of the images of
    each truth class. For each replicate the draws are: readers, then each stratum
    in the order given.
    """
    correct = np.asarray(correct, dtype=float)
    reads = np.asarray(reads, dtype=float)
    n_readers, n_images = correct.shape
    strata = [np.asarray(s, dtype=np.int64) for s in strata if len(s)]
    out = np.empty(replicates)
    for start in range(0, replicates, CHUNK):
        size = min(CHUNK, replicates - start)
        w = np.empty((size, n_readers))
        v = np.zeros((size, n_images))
        for b in range(size):
            w[b] = draw_counts(rng, n_readers)
            for stratum in strata:
                v[b, stratum] = draw_counts(rng, stratum.size)
        hits = np.einsum("bi,bi->b", w @ correct, v)
        total = np.einsum("bi,bi->b", w @ reads, v)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + size] = np.where(total > 0, hits / total, np.nan)
    return out


def percentile_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """The percentile interval of the replicates that have a value (linear interpolation)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)
