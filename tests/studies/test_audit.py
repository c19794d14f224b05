"""The blinding audit: traits of the served files that would let readers take a shortcut."""

import struct
import zlib

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from scipy import ndimage

from studies.audit import WARN_AT, audit, image_traits, noise_sigma
from studies.imaging.normalise import normalise
from studies.imaging.phantoms import phantom
from studies.models import Image, Study, StudyImage
from tests.studies.study_fixtures import make_images, make_real_set

PHANTOMS = [phantom(seed, 256) for seed in range(24)]


def files(pixels: list[np.ndarray]) -> list[bytes]:
    """Through the one normaliser, as every reader file is made."""
    return [normalise(p, size=128) for p in pixels]


def report_of(real: list[bytes], synthetic: list[bytes]):
    return audit([(data, False) for data in real] + [(data, True) for data in synthetic])


def row(report, name):
    return next(r for r in report.rows if r.name == name)


def test_two_groups_from_the_same_source_pass():
    report = report_of(files(PHANTOMS[:12]), files(PHANTOMS[12:]))
    assert report.passed, report.problems
    assert all(r.auc < WARN_AT for r in report.rows)
    assert {r.name for r in report.rows} == {
        "file_size", "dimensions", "mode", "chunks", "mean", "spread", "skewness", "kurtosis", "entropy",
        "noise", "sharpness",
    }  # fmt: skip
    assert row(report, "chunks").auc == 0.5 and row(report, "chunks").real == "IHDR,IDAT,IEND"


def test_a_brighter_group_fails_on_mean_intensity():
    brighter = [np.clip(p * 0.8 + 0.2, 0, 1) for p in PHANTOMS[12:]]
    report = report_of(files(PHANTOMS[:12]), files(brighter))
    mean = row(report, "mean")
    assert mean.warn and mean.auc == 1.0 and mean.higher_in == "synthetic"
    assert not report.passed
    assert "Mean intensity alone separates real from synthetic images (AUC 1.00)" in report.problems


def test_added_noise_fails_on_noise_level_and_blur_on_sharpness():
    rng = np.random.default_rng(0)
    noisy = [np.clip(p + rng.normal(0, 0.03, p.shape), 0, 1) for p in PHANTOMS[12:]]
    assert row(report_of(files(PHANTOMS[:12]), files(noisy)), "noise").warn
    blurred = [ndimage.gaussian_filter(p, 2.0) for p in PHANTOMS[12:]]
    sharpness = row(report_of(files(PHANTOMS[:12]), files(blurred)), "sharpness")
    assert sharpness.warn and sharpness.higher_in == "real"


def with_text_chunk(png: bytes) -> bytes:
    """Insert a tEXt chunk after IHDR, as some image tools do."""
    body = b"Software\x00diffusers"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def test_an_extra_chunk_in_one_group_fails_on_the_chunk_list():
    report = report_of(files(PHANTOMS[:12]), [with_text_chunk(f) for f in files(PHANTOMS[12:])])
    chunks = row(report, "chunks")
    assert chunks.warn and chunks.synthetic == "IHDR,tEXt,IDAT,IEND"


def test_a_category_held_by_one_image_alone_does_not_count_as_a_shortcut():
    synthetic = files(PHANTOMS[12:])
    synthetic[0] = with_text_chunk(synthetic[0])
    assert not row(report_of(files(PHANTOMS[:12]), synthetic), "chunks").warn


def test_immerkaers_estimate_finds_a_known_noise_level():
    # Immerkaer (1996): on a flat image with Gaussian noise of sigma s, the estimate is s.
    rng = np.random.default_rng(1)
    for sigma in (2.0, 5.0, 10.0):
        flat = 128 + rng.normal(0, sigma, (256, 256))
        assert noise_sigma(flat) == pytest.approx(sigma, rel=0.05)
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))  # a plane: no noise, no false alarm
    assert noise_sigma(ramp) == pytest.approx(0.0, abs=1e-9)


def test_traits_come_from_the_bytes_readers_get():
    data = files(PHANTOMS[:1])[0]
    traits = image_traits(data)
    assert traits["file_size"] == len(data)
    assert traits["dimensions"] == "128x128" and traits["mode"] == "colour type 0, 8 bits"


def test_an_empty_group_does_not_pass_and_says_which():
    report = report_of(files(PHANTOMS[:3]), [])
    assert not report.passed and report.problems == ["no synthetic images to audit"]
    assert report.as_dict()["passed"] is False


@pytest.mark.django_db
def test_the_command_prints_the_table_and_fails_when_the_audit_warns(capsys):
    # Enough images that chance alone stays under the warning (with 4 a side it often does not).
    images = list(make_real_set(24).images.all())
    study = Study.objects.create(title="Audit me", status=Study.Status.READY)
    StudyImage.objects.bulk_create(StudyImage(study=study, image=image) for image in images)
    Image.objects.filter(pk__in=[i.pk for i in images[::2]]).update(origin=Image.Origin.SYNTHETIC)
    call_command("audit_blinding", str(study.pk))
    out = capsys.readouterr().out
    assert "12 real, 12 synthetic" in out and "Noise level" in out and "No trait alone separates" in out

    brighter = Study.objects.create(title="Shortcut", status=Study.Status.READY)
    real_set = make_real_set(4, name="dark")
    StudyImage.objects.bulk_create(StudyImage(study=brighter, image=i) for i in real_set.images.all())
    noise = [i for i in make_images(8) if i.origin == Image.Origin.SYNTHETIC]  # random pixels
    StudyImage.objects.bulk_create(StudyImage(study=brighter, image=i) for i in noise)
    with pytest.raises(CommandError, match="The audit warns"):
        call_command("audit_blinding", "Shortcut")
    with pytest.raises(CommandError, match="No study 'nope'"):
        call_command("audit_blinding", "nope")
