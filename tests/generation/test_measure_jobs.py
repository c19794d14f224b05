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
from studies.models import Image, Study, StudyImage
from tests.generation.measure_fixtures import study_with_copies
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
    assert notes[0].startswith(f"real image {damaged.pk} left out: UnidentifiedImageError")
    assert notes[1].startswith(f"synthetic image {gone.pk} left out: ")
    assert re.search("No such file|does not exist", notes[1])  # a folder's words, or the S3 store's
    assert f"note: {notes[1]}" in summary(results)


def test_a_study_job_measures_each_arm_against_the_studys_real_images(weights, trained_version, settings):
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")  # XRV alone: quicker
    study, real, synthetic = study_with_copies(trained_version)
    job = measure_job_create(study=study)
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done", job.error
    assert job.total == 6 + (4 + 6) + 3  # the real images pass through the extractor once
    results = job.results
    assert (results["study"], results["n_real"], list(results["arms"])) == (
        "Two arms",
        6,
        ["cxr-other", "cxr-trained"],
    )
    trained, other = results["arms"]["cxr-trained"], results["arms"]["cxr-other"]
    assert (trained["n_synthetic"], trained["n_real"], trained["n_training"]) == (4, 6, 6)
    assert (other["n_synthetic"], other["n_real"], other["n_training"]) == (3, 6, 0)
    assert trained["version"] == "cxr-trained v1"
    assert (
        trained["extractors"]["xrv-densenet121"]["n_real"] == 6
        and "skipped" in trained["extractors"]["inception-v3-fid"]
    )
    assert (
        trained["diversity"]["real"] == other["diversity"]["real"]
        and other["diversity"]["synthetic"]["n_pairs"] == 3
    )
    # A copy of a training image that is also shown as real: flagged against both.
    for kind in ("training", "reference"):
        flagged = {row["image"]: row["nearest_by_ssim"] for row in trained["memorisation"][kind]["flagged"]}
        assert set(flagged) == {synthetic[0].pk, synthetic[2].pk}
    reference = {
        row["image"]: row["nearest_by_ssim"] for row in trained["memorisation"]["reference"]["flagged"]
    }
    assert reference == {synthetic[0].pk: real[2].pk, synthetic[2].pk: real[4].pk}
    assert other["memorisation"]["reference"]["flagged"] == []
    assert other["memorisation"]["training"]["note"] == "The model was not trained in this app."
    lines = summary(results)
    assert lines[0] == "Study 'Two arms': each arm against its 6 real images"
    assert "Arm cxr-trained: 4 synthetic images of cxr-trained v1" in lines
    assert "  possible copies of reference images: 2 of 4 (50.0%; highest SSIM" in "\n".join(lines)


def test_a_study_is_measured_once_prepared_and_the_command_takes_its_id_or_title(trained_version, capsys):
    study, _, _ = study_with_copies(trained_version, status="draft")
    with pytest.raises(MeasureRefused, match="The study is draft: its images are drawn when it is prepared"):
        measure_job_create(study=study)
    with pytest.raises(CommandError, match="The study is draft"):
        call_command("measure_realism", "--study", str(study.pk))
    Study.objects.filter(pk=study.pk).update(status="open")
    call_command("measure_realism", "--study", "Two arms", "--extractor", "xrv-densenet121")
    job = MeasureJob.objects.get()
    assert (job.study, job.version, job.extractors) == (study, None, ["xrv-densenet121"])
    assert (
        capsys.readouterr().out.strip()
        == f"Measure job {job.pk}: each arm of Two arms against its real images."
    )
    with pytest.raises(CommandError, match="No study with the id or title '999'"):
        call_command("measure_realism", "--study", "999")
    with pytest.raises(CommandError, match="against its own real images: drop --reference-set"):
        call_command("measure_realism", "--study", "Two arms", "--reference-set", "study phantoms")
    StudyImage.objects.filter(study=study, image__origin="real").exclude(practice=True).delete()
    study.refresh_from_db()
    with pytest.raises(MeasureRefused, match="fewer than 2 real images"):
        measure_job_create(study=study)


def test_with_no_weights_at_all_copies_are_still_found_by_pixels_and_ssim(
    trained_version, settings, tmp_path
):
    settings.METRICS_XRV_WEIGHTS = str(tmp_path / "absent.pt")
    settings.METRICS_INCEPTION_WEIGHTS = str(tmp_path / "absent.pth")
    version, training = trained_version
    job = measure_job_create(version=version, reference_sets=[make_real_set(3, name="refs")])
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done" and job.total == 0  # nothing through an extractor
    memorisation = job.results["memorisation"]
    assert (memorisation["extractor"], memorisation["thresholds"]) == (
        "pixels-32",
        {"cosine": None, "ssim": 0.85},
    )
    assert "flagged by SSIM alone" in memorisation["note"]
    synthetic = list(Image.objects.filter(generated__version=version).order_by("generated__seed"))
    flagged = {row["image"]: row["nearest_by_ssim"] for row in memorisation["training"]["flagged"]}
    assert flagged == {synthetic[0].pk: training[2].pk, synthetic[2].pk: training[4].pk}
    assert all(row["ssim"] >= 0.85 for row in memorisation["training"]["flagged"])
    assert any(line.startswith("possible copies of training images: 2 of 4") for line in summary(job.results))
