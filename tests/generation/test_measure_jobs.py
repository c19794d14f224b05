"""Measuring jobs: a model version's images against real image sets, with what a researcher reads back.

The job's body (`measure_run`, what the `measure` task runs on a worker) runs here in the test's
process: what it computes does not depend on the worker. Extractors have random weights written
by the test into files named by the settings, the same path that reads published weights.
"""

import io
import re

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from generation.management.commands.measure_realism import summary
from generation.measure_jobs import MeasureRefused, measure_job_create, measure_run
from generation.models import MeasureJob
from studies.images import file_write
from studies.models import Image
from tests.studies.study_fixtures import fixture_version, make_real_set

pytestmark = pytest.mark.django_db


def test_a_measure_job_computes_every_measure_and_finds_the_copies_of_training_images(
    weights, trained_version
):
    version, training = trained_version
    reference = make_real_set(6, name="reference phantoms")
    job = measure_job_create(version=version, reference_sets=[reference])
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done", job.error
    assert job.done == job.total == (4 + 6 + 6) * 2  # every image through both extractors
    results = job.results
    assert (results["n_synthetic"], results["n_real"], results["n_training"]) == (4, 6, 6)
    for name, width_resolution in (("xrv-densenet121", 224), ("inception-v3-fid", 299)):
        figures = results["extractors"][name]
        assert figures["resolution"] == width_resolution and len(figures["weights_sha256"]) == 64
        assert figures["frechet_distance"] >= 0 and np.isfinite(figures["kid"])
        assert "precision" not in figures  # 4 synthetic images: not more than k = 5
        assert (figures["n_real"], figures["n_synthetic"]) == (6, 4)
    assert results["diversity"]["synthetic"]["n_pairs"] == 6 and results["diversity"]["real"]["n_pairs"] == 15
    memorisation = results["memorisation"]
    assert memorisation["extractor"] == "xrv-densenet121"
    flagged = {row["image"]: row["nearest_by_ssim"] for row in memorisation["training"]["flagged"]}
    synthetic = list(Image.objects.filter(generated__version=version).order_by("generated__seed"))
    assert flagged == {synthetic[0].pk: training[2].pk, synthetic[2].pk: training[4].pk}
    assert memorisation["training"]["share_flagged"] == 0.5
    lines = summary(results)
    assert lines[0] == "4 synthetic images of cxr-trained v1 against 6 real (reference phantoms)"
    assert any(line.startswith("possible copies of training images: 2 of 4 (50.0%") for line in lines)


def test_an_extractor_without_its_weights_file_is_skipped_and_says_so(weights, trained_version, settings):
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")
    version, _ = trained_version
    job = measure_job_create(version=version, reference_sets=[make_real_set(3)])
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done" and job.total == (4 + 3 + 6)
    skipped = job.results["extractors"]["inception-v3-fid"]["skipped"]
    assert "absent.pth" in skipped and "the classic FID is skipped" in skipped
    assert "frechet_distance" in job.results["extractors"]["xrv-densenet121"]
    assert any(line.startswith("inception-v3-fid: skipped.") for line in summary(job.results))


def test_what_cannot_be_measured_is_refused_with_the_reason(trained_version):
    version, _ = trained_version
    reference = make_real_set(3)
    with pytest.raises(MeasureRefused, match="Unknown extractor clip"):
        measure_job_create(version=version, reference_sets=[reference], extractors=["clip"])
    with pytest.raises(MeasureRefused, match="at least one image set"):
        measure_job_create(version=version, reference_sets=[])
    with pytest.raises(MeasureRefused, match="fewer than 2 real images"):
        measure_job_create(version=version, reference_sets=[make_real_set(1, name="lonely")])
    with pytest.raises(MeasureRefused, match="fewer than 2 images: generate some first"):
        measure_job_create(version=fixture_version("empty"), reference_sets=[reference])
    assert not MeasureJob.objects.exists()


def test_the_command_queues_a_job_and_names_what_is_wrong(trained_version, capsys):
    version, _ = trained_version
    make_real_set(3, name="refs")
    call_command("measure_realism", "--model", "cxr-trained", "--reference-set", "refs")
    job = MeasureJob.objects.get()
    assert capsys.readouterr().out.strip() == f"Measure job {job.pk}: cxr-trained v1 against refs."
    assert job.extractors == ["xrv-densenet121", "inception-v3-fid"] and job.status == "queued"
    with pytest.raises(CommandError, match="No image set named 'nope'"):
        call_command("measure_realism", "--model", "cxr-trained", "--reference-set", "nope")
    with pytest.raises(CommandError, match="No model named 'ghost'"):
        call_command("measure_realism", "--model", "ghost", "--reference-set", "refs")


def test_the_command_waits_for_a_real_worker_and_prints_the_figures(weights, trained_version, celery_workers):
    celery_workers.start()
    make_real_set(6, name="refs")
    out = io.StringIO()
    call_command(
        "measure_realism", "--model", "cxr-trained", "--reference-set", "refs",
        "--extractor", "xrv-densenet121", "--wait", stdout=out,
    )  # fmt: skip
    job = MeasureJob.objects.get()
    assert job.status == "done" and job.done == job.total == 4 + 6 + 6
    printed = out.getvalue().splitlines()
    assert printed[0] == f"Measure job {job.pk}: cxr-trained v1 against refs."
    assert "[##############################] 16/16 images through the extractors" in printed
    sha = job.results["extractors"]["xrv-densenet121"]["weights_sha256"]
    assert any(line.startswith(f"xrv-densenet121 (weights sha256 {sha[:12]}): FD ") for line in printed)
    assert any(line.startswith("possible copies of training images: 2 of 4") for line in printed)


def test_a_missing_or_damaged_image_is_left_out_and_named_and_the_rest_measured(
    weights, trained_version, settings
):
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")  # XRV alone: quicker
    version, _ = trained_version
    reference = make_real_set(6, name="refs")
    gone = Image.objects.filter(generated__version=version).order_by("generated__seed").first()
    gone.file.storage.delete(gone.file.name)
    damaged = Image.objects.filter(image_set=reference).order_by("pk").first()
    file_write(damaged.file, b"not a png at all")
    damaged.save(update_fields=["file"])
    job = measure_job_create(version=version, reference_sets=[reference])
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done", job.error
    results = job.results
    assert (results["n_synthetic"], results["n_real"], results["n_training"]) == (3, 5, 6)
    assert results["extractors"]["xrv-densenet121"]["n_synthetic"] == 3
    notes = results["left_out"]
    assert len(notes) == 2
    assert notes[0].startswith(f"synthetic image {gone.pk} left out: ")
    assert re.search("No such file|does not exist", notes[0])  # a folder's words, or the S3 store's
    assert notes[1].startswith(f"real image {damaged.pk} left out: UnidentifiedImageError")
    assert f"note: {notes[0]}" in summary(results)
