"""Readers' orders: every image once, practice first, repeats far from their first showing."""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from studies.sequences import repeat_count, sequence_order


@given(
    n=st.integers(min_value=0, max_value=300),
    practice=st.integers(min_value=0, max_value=10),
    percent=st.integers(min_value=0, max_value=100),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_every_order_shows_each_image_once_and_each_repeat_far_from_its_first(n, practice, percent, seed):
    images, warmup = list(range(n)), list(range(1000, 1000 + practice))
    slots = sequence_order(images=images, practice=warmup, repeat_percent=percent, seed=seed)
    assert all(s.is_practice for s in slots[:practice]) and not any(s.is_practice for s in slots[practice:])
    assert sorted(s.image_id for s in slots[:practice]) == warmup
    study = slots[practice:]
    firsts = [s.image_id for s in study if not s.is_repeat]
    assert sorted(firsts) == images
    repeats = [s for s in study if s.is_repeat]
    assert len(repeats) == repeat_count(n, percent) <= n // 2
    assert max(Counter(s.image_id for s in repeats).values(), default=1) == 1
    where = {s.image_id: i for i, s in enumerate(study) if not s.is_repeat}
    for i, s in enumerate(study):
        if s.is_repeat:
            # At least half the study's first showings lie between the two showings.
            between = sum(1 for t in study[where[s.image_id] + 1 : i] if not t.is_repeat)
            assert between >= n // 2
    assert sequence_order(images=images, practice=warmup, repeat_percent=percent, seed=seed) == slots


def test_the_share_of_repeats_is_rounded_and_capped_at_half():
    assert repeat_count(100, 10) == 10
    assert repeat_count(7, 10) == 1
    assert repeat_count(3, 50) == 1
    assert repeat_count(10, 80) == 5
    assert repeat_count(0, 10) == 0
