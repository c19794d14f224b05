"""Each reader's order of images: shuffled, practice first, repeats at least half a sequence apart."""

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


def sequence_order(*, images: list[int], practice: list[int], repeat_percent: int, seed: int) -> list[Slot]:
    """The order one reader sees, rebuilt exactly from `seed`.

    Practice images come first (shuffled), then the study's images shuffled. The
    repeated images are drawn at random from the first half of that shuffle, and
    each second showing goes to a random place at least half the sequence (of
    first showings) after its first, so that a reader cannot simply remember it.
    """
    rng = random.Random(seed)
    warmup = sorted(practice)
    rng.shuffle(warmup)
    order = sorted(images)
    rng.shuffle(order)
    n = len(order)
    k = repeat_count(n, repeat_percent)
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
