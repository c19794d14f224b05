"""What a measuring job computes on image sets (generation/measures.py), on images made here.

MS-SSIM is checked against a second published implementation (pytorch-msssim, Su 2019) on the
same inputs; memorisation against planted copies (a training image resized, re-encoded as an
8-bit PNG and lightly noised) and independent phantoms.
"""

import pytest
import torch
from pytorch_msssim import ms_ssim as published_ms_ssim

from generation import features, measures
from studies.imaging.phantoms import phantom
from tests.generation.measure_fixtures import copied


class PooledPixels(torch.nn.Module):
    """A deterministic stand-in extractor: the image averaged over a 16 x 16 grid."""

    width = 256

    def embed(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)


POOLED = features.Extractor(
    name="pooled-pixels",
    model=PooledPixels(),
    sha256="0" * 64,
    resolution=224,
    prepare=features._xrv_prepared,
)


@pytest.fixture(scope="module")
def training():
    return [phantom(seed, 256) for seed in range(10)]


def test_ms_ssim_diversity_agrees_with_a_second_published_implementation(training):
    pair = [training[0], copied(training[0], 1)]
    ours = measures.diversity(pair)
    resized = measures._resized(pair, measures.DIVERSITY_SIDE)
    theirs = published_ms_ssim(resized[:1], resized[1:], data_range=1.0, size_average=False).item()
    assert ours["n_pairs"] == 1 and ours["ms_ssim"] == pytest.approx(theirs, abs=0.01)
    assert measures.diversity([training[1], training[1].copy()])["ms_ssim"] == pytest.approx(1.0, abs=1e-5)


def test_diversity_samples_distinct_pairs_and_says_when_it_cannot(training):
    sampled = measures.diversity(training, pairs=12, seed=4)
    assert (sampled["n_pairs"], sampled["n_images"]) == (12, 10)
    assert sampled == measures.diversity(training, pairs=12, seed=4)  # seeded
    repeated = measures.diversity([training[0]] * 3 + [training[1]])
    assert repeated["ms_ssim"] > measures.diversity(training)["ms_ssim"]  # a set that repeats itself
    assert measures.diversity([training[0]]) == {
        "ms_ssim": None,
        "n_pairs": 0,
        "n_images": 1,
        "note": "fewer than 2 images",
    }


def test_planted_copies_are_flagged_with_their_originals_and_independent_images_are_not(training):
    synthetic = [copied(training[3], 1), phantom(100, 256), copied(training[7], 2)]
    synthetic += [phantom(seed, 256) for seed in (101, 102, 103)]
    found = measures.nearest_copies(
        synthetic,
        measures.features_of(POOLED, synthetic),
        training,
        measures.features_of(POOLED, training),
    )
    flagged = {row["synthetic"]: row for row in found if row["flagged"]}
    assert set(flagged) == {0, 2}
    assert (flagged[0]["nearest_by_cosine"], flagged[0]["nearest_by_ssim"]) == (3, 3)
    assert (flagged[2]["nearest_by_cosine"], flagged[2]["nearest_by_ssim"]) == (7, 7)
    assert all(row["ssim"] > 0.9 and row["cosine"] > 0.99 for row in flagged.values())
    assert all(row["ssim"] < measures.Thresholds().ssim for row in found if not row["flagged"])


def test_with_a_random_weight_network_the_ssim_still_finds_the_copy(training, tmp_path):
    torch.manual_seed(0)
    torch.save(features.XRVDenseNet().state_dict(), tmp_path / "xrv.pt")
    extractor = features.load_xrv_densenet(tmp_path / "xrv.pt")
    synthetic = [copied(training[5], 3)]
    row = measures.nearest_copies(
        synthetic,
        measures.features_of(extractor, synthetic),
        training,
        measures.features_of(extractor, training),
        neighbours=10,
    )[0]
    assert row["nearest_by_ssim"] == 5 and row["flagged"]


def test_feature_measures_say_what_they_were_computed_on(training):
    real = measures.features_of(POOLED, training)
    same = measures.feature_measures(real, real.copy(), POOLED, kid_subsets=5, kid_subset_size=8)
    assert same["frechet_distance"] == pytest.approx(0, abs=1e-6)
    assert (same["precision"], same["recall"], same["k"]) == (1.0, 1.0, 5)
    assert (same["extractor"], same["weights_sha256"], same["resolution"]) == ("pooled-pixels", "0" * 64, 224)
    assert (same["n_real"], same["n_synthetic"], same["kid_subset_size"]) == (10, 10, 8)
    small = measures.feature_measures(real, real[:4], POOLED, kid_subsets=2)
    assert "precision" not in small and "more than k = 5" in small["notes"][0]
    assert "frechet_distance" in small
    alone = measures.feature_measures(real, real[:1], POOLED)
    assert "frechet_distance" not in alone and "at least 2 images" in alone["notes"][0]
