"""Each reader's order of images: shuffled, practice first, repeats at least half a sequence apart
(or, with a washout, all after the first showings)."""

import random
from dataclasses import dataclass

MAX_REPEAT_PERCENT = 50


@dataclass(frozen=True)
class Slot:
    image_id: int
    is_repeat: bool = False
    is_practice: bool = False


def repeat_count(n_images: int, percent: int) -> int:
    """How many images a reader sees twice: `percent` of them, rounded, at most half."""
    percent = max(0, min(percent, MAX_REPEAT_PERCENT))
    return min(round(n_images * percent / 100), n_images // 2)


def sequence_order(
    *, images: list[int], practice: list[int], repeat_percent: int, seed: int, washout: bool = False
) -> list[Slot]:
    """The order one reader sees, rebuilt exactly from `seed`.

    Practice images come first (shuffled), then the study's images shuffled. The
    repeated images are drawn at random from the first half of that shuffle, and
    each second showing goes to a random place at least half the sequence (of
    first showings) after its first, so that a reader cannot simply remember it.
    With a `washout` (a least time between first and second reads), the repeats,
    drawn from the whole shuffle, come after every first showing, shuffled again:
    one wait then holds the washout for all of them.
    """
    rng = random.Random(seed)
    warmup = sorted(practice)
    rng.shuffle(warmup)
    order = sorted(images)
    rng.shuffle(order)
    n = len(order)
    k = repeat_count(n, repeat_percent)
    if washout:
        again = rng.sample(order, k) if k else []
        rng.shuffle(again)
        return [
            *(Slot(image, is_practice=True) for image in warmup),
            *(Slot(image) for image in order),
            *(Slot(image, is_repeat=True) for image in again),
        ]
    gap = n // 2
    # Only images early enough to have a place `gap` later can be repeated.
    firsts = sorted(rng.sample(range(n - gap), k)) if k else []
    # Second showings, each after the first showing at index `gap` or more later.
    after: dict[int, list[int]] = {}
    for first in firsts:
        after.setdefault(rng.randint(first + gap, n - 1), []).append(order[first])
    slots = [Slot(image, is_practice=True) for image in warmup]
    for index, image in enumerate(order):
        slots.append(Slot(image))
        slots.extend(Slot(again, is_repeat=True) for again in after.get(index, []))
    return slots
