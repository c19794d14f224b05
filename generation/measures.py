"""Machine measures of a synthetic image set against a real one: what a measuring job computes.

No database here: images come in as 2-D arrays in [0, 1] (or callables that load one), figures
come out as plain dictionaries, each saying what it was computed with (extractor, weights'
hash, image counts, resolution). The arithmetic on features is analysis/realism.py's; the
networks are generation/features.py's; MS-SSIM and SSIM are torchmetrics'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from analysis import realism

from .features import Extractor, image_features

DIVERSITY_SIDE = 256  # MS-SSIM's five scales need at least 161 px
DIVERSITY_PAIRS = 500
SIMILARITY_SIDE = 128  # SSIM between a synthetic image and its candidate neighbours
NEIGHBOURS = 5  # candidates by feature cosine whose SSIM is computed


@dataclass(frozen=True)
class Thresholds:
    """Beyond either, a synthetic image is flagged as a possible copy of its neighbour, for a
    researcher to judge side by side. Starting points, recorded with every result."""

    cosine: float | None = 0.97  # None: flagged by SSIM alone (neighbours found by pixels)
    ssim: float = 0.85


PIXEL_SIDE = 32  # neighbours by pixels, where no extractor has weights: 32 x 32 grey levels


def pixel_features(images: Sequence, side: int = PIXEL_SIDE) -> np.ndarray:
    """Each image's centre square at side x side, flattened: a stand-in for features when no
    extractor has weights, good enough to find a resized or re-encoded copy among the nearest."""
    rows = [_resized([image], side).reshape(-1).numpy() for image in images]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), side * side)


def _pixels(image) -> np.ndarray:
    pixels = np.asarray(image() if callable(image) else image, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"The measures are of 2-D grey images, not shape {pixels.shape}.")
    return pixels


def _resized(images, side: int) -> torch.Tensor:
    """Images (arrays in [0, 1]) as one batch N x 1 x side x side, each its centre square resized."""
    batch = []
    for image in images:
        pixels = _pixels(image)
        height, width = pixels.shape
        edge = min(height, width)
        top, left = (height - edge) // 2, (width - edge) // 2
        square = torch.from_numpy(np.ascontiguousarray(pixels[top : top + edge, left : left + edge]))[
            None, None
        ]
        batch.append(F.interpolate(square, size=(side, side), mode="bilinear", antialias=True).clamp(0, 1))
    return torch.cat(batch) if batch else torch.empty(0, 1, side, side)


def diversity(
    images: Sequence, *, pairs: int = DIVERSITY_PAIRS, seed: int = 0, side: int = DIVERSITY_SIDE
) -> dict:
    """Mean MS-SSIM over random pairs of distinct images of one set (Odena et al. 2017 used it for
    GAN diversity): near 1, the set repeats itself; lower, more diverse. All pairs where there
    are fewer than `pairs`."""
    count = len(images)
    if count < 2:
        return {"ms_ssim": None, "n_pairs": 0, "n_images": count, "note": "fewer than 2 images"}
    every = count * (count - 1) // 2
    rng = np.random.default_rng(seed)
    if every <= pairs:
        chosen = [(i, j) for i in range(count) for j in range(i + 1, count)]
    else:
        chosen = set()
        while len(chosen) < pairs:
            i, j = rng.choice(count, 2, replace=False)
            chosen.add((min(i, j), max(i, j)))
        chosen = sorted(chosen)
    cache: dict[int, torch.Tensor] = {}

    def image(index):
        if index not in cache:
            cache[index] = _resized([images[index]], side)
        return cache[index]

    values = []
    with torch.inference_mode():
        for start in range(0, len(chosen), 32):
            block = chosen[start : start + 32]
            left = torch.cat([image(i) for i, _ in block])
            right = torch.cat([image(j) for _, j in block])
            values.append(
                multiscale_structural_similarity_index_measure(left, right, data_range=1.0, reduction="none")
            )
    values = torch.cat(values).double().numpy()
    return {
        "ms_ssim": float(values.mean()),
        "ms_ssim_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "n_pairs": len(values),
        "n_images": count,
        "resolution": side,
    }


def nearest_copies(
    synthetic_images: Sequence,
    synthetic_features: np.ndarray,
    reference_images: Sequence,
    reference_features: np.ndarray,
    *,
    thresholds: Thresholds = Thresholds(),
    neighbours: int = NEIGHBOURS,
    side: int = SIMILARITY_SIDE,
) -> list[dict]:
    """For each synthetic image, its nearest reference image by the cosine of features centred
    on the references' mean, and the most similar by SSIM among its `neighbours` nearest by
    that cosine (an SSIM against every reference would be millions of comparisons); flagged
    beyond either threshold."""
    if not len(reference_images):
        return []
    reference_features = np.asarray(reference_features, dtype=np.float64)
    candidates, cosines = realism.nearest_by_cosine(
        synthetic_features, reference_features, k=neighbours, centre=reference_features.mean(axis=0)
    )
    count = len(synthetic_images)
    candidates, cosines = candidates.reshape(count, -1), cosines.reshape(count, -1)
    results = []
    with torch.inference_mode():
        for index, row in enumerate(candidates):
            query = _resized([synthetic_images[index]], side).expand(len(row), -1, -1, -1)
            scores = structural_similarity_index_measure(
                query, _resized([reference_images[j] for j in row], side), data_range=1.0, reduction="none"
            )
            best = int(scores.argmax())
            results.append(
                {
                    "synthetic": index,
                    "nearest_by_cosine": int(row[0]),
                    "cosine": float(cosines[index, 0]),
                    "nearest_by_ssim": int(row[best]),
                    "ssim": float(scores[best]),
                    "flagged": bool(
                        (thresholds.cosine is not None and cosines[index, 0] >= thresholds.cosine)
                        or scores[best] >= thresholds.ssim
                    ),
                }
            )
    return results


def feature_measures(
    real_features: np.ndarray,
    synthetic_features: np.ndarray,
    extractor: Extractor,
    *,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """Fréchet distance, KID and precision/recall/density/coverage on one extractor's features,
    with what they were computed on. A set too small for a measure gets a note, not a figure."""
    n_real, n_synthetic = len(real_features), len(synthetic_features)
    figures: dict = {
        "extractor": extractor.name,
        "weights_sha256": extractor.sha256,
        "resolution": extractor.resolution,
        "n_real": n_real,
        "n_synthetic": n_synthetic,
        "notes": [],
    }
    if min(n_real, n_synthetic) < 2:
        figures["notes"].append("Each set needs at least 2 images for these measures.")
        return figures
    figures["frechet_distance"] = realism.frechet_distance(
        realism.feature_stats(real_features), realism.feature_stats(synthetic_features)
    )
    found = realism.kid(
        real_features, synthetic_features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    figures.update(
        kid=found.mean,
        kid_std=found.std,
        kid_ci_low=found.ci_low,
        kid_ci_high=found.ci_high,
        kid_subsets=found.subsets,
        kid_subset_size=found.subset_size,
    )
    if min(n_real, n_synthetic) > k:
        manifold = realism.prdc(real_features, synthetic_features, k=k)
        figures.update(
            precision=manifold.precision,
            recall=manifold.recall,
            density=manifold.density,
            coverage=manifold.coverage,
            k=k,
        )
    else:
        figures["notes"].append(
            f"Precision, recall, density and coverage need more than k = {k} images per set."
        )
    return figures


def features_of(
    extractor: Extractor, images: Sequence, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    return image_features(extractor, (_pixels(image) for image in images), progress=progress)
