"""The two-way bootstrap: its matrix form is the plain resampling of reads, seeded and stable."""

import numpy as np
import pytest

from analysis.bootstrap import draw_counts, group_rng, percentile_interval, two_way_bootstrap


def resample_by_hand(correct, reads, strata, *, replicates, rng):
    """The bootstrap as its definition reads: draw readers, then images within each truth class,
    and list every read of a drawn reader on a drawn image (duplicates counted each time)."""
    n_readers = correct.shape[0]
    out = []
    for _ in range(replicates):
        drawn_readers = np.repeat(np.arange(n_readers), draw_counts(rng, n_readers))
        drawn_images = []
        for stratum in strata:
            drawn_images += list(np.repeat(stratum, draw_counts(rng, len(stratum))))
        hits = total = 0
        for r in drawn_readers:
            for i in drawn_images:
                if reads[r, i]:
                    total += 1
                    hits += correct[r, i]
        out.append(hits / total if total else np.nan)
    return np.array(out)


def test_the_matrix_form_equals_resampling_the_reads_one_by_one():
    rng = np.random.default_rng(11)
    reads = (rng.random((5, 12)) < 0.8).astype(float)  # some readers skipped some images
    correct = reads * (rng.random((5, 12)) < 0.6)
    strata = [np.arange(0, 7), np.arange(7, 12)]
    fast = two_way_bootstrap(correct, reads, strata, replicates=150, rng=np.random.default_rng(4))
    slow = resample_by_hand(correct, reads, strata, replicates=150, rng=np.random.default_rng(4))
    assert fast == pytest.approx(slow, abs=1e-12, nan_ok=True)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(2)
    reads = np.ones((8, 40))
    correct = (rng.random((8, 40)) < 0.7).astype(float)
    strata = [np.arange(20), np.arange(20, 40)]

    def interval(seed, group="all"):
        values = two_way_bootstrap(correct, reads, strata, replicates=300, rng=group_rng(seed, group))
        return percentile_interval(values)

    assert interval(0) == interval(0)
    assert interval(0) != interval(1)
    assert interval(0, "all") != interval(0, "real")  # each group has its own stream
    low, high = interval(0)
    assert low < correct.mean() < high


def test_all_correct_reads_give_a_degenerate_interval():
    reads = np.ones((3, 6))
    values = two_way_bootstrap(reads, reads, [np.arange(6)], replicates=50, rng=np.random.default_rng(0))
    assert percentile_interval(values) == (1.0, 1.0)


def test_the_interval_narrows_with_more_readers_and_images():
    rng = np.random.default_rng(8)

    def width(n_readers, n_images):
        reads = np.ones((n_readers, n_images))
        correct = (rng.random(reads.shape) < 0.65).astype(float)
        strata = [np.arange(n_images // 2), np.arange(n_images // 2, n_images)]
        values = two_way_bootstrap(correct, reads, strata, replicates=400, rng=np.random.default_rng(1))
        low, high = percentile_interval(values)
        return high - low

    assert width(20, 400) < width(4, 40)


def test_an_interval_of_nothing_is_undefined():
    assert percentile_interval([np.nan, np.nan]) is None
