"""Measure realism from the admin, in Chromium: the model's page, the form, the job's page with its figures
and the flagged copies beside their originals; computed by a real worker."""

import re

import pytest
from playwright.sync_api import expect

from config.celery import app as celery_app
from generation.measure_jobs import measure_job_create
from generation.models import MeasureJob
from generation.operations import queue_lengths
from tests.generation.measure_fixtures import study_with_copies
from tests.generation.test_training_admin import admin_log_in
from tests.studies.study_fixtures import make_real_set

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.services]


def test_a_researcher_measures_a_model_and_sees_its_copies_of_training_images(
    weights,
    trained_version,
    tabs,
    researcher,
    celery_workers,
):
    version, training = trained_version
    make_real_set(6, name="reference phantoms")
    celery_workers.start()
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    page.goto(f"{tab.base_url}/admin/generation/generativemodel/{version.model.pk}/change/")
    page.get_by_role("link", name="Measure realism").click()
    expect(page.get_by_role("heading", name="Measure the realism of cxr-trained")).to_be_visible()

    page.get_by_role("button", name="Measure").click()  # nothing chosen: refused on the form
    expect(page.get_by_text("This field is required.")).to_have_count(1)
    assert not MeasureJob.objects.exists()

    page.get_by_label("reference phantoms").check()
    page.get_by_label("Inception-v3 (the classic FID)").uncheck()
    page.get_by_role("button", name="Measure").click()
    job = MeasureJob.objects.get()
    assert job.extractors == ["xrv-densenet121"] and [s.name for s in job.reference_sets.all()] == [
        "reference phantoms"
    ]
    expect(page).to_have_url(re.compile(rf"/admin/generation/measurejob/{job.pk}/change/$"))

    # The page reloads itself until the worker is done, then shows the figures.
    expect(page.get_by_role("heading", name="Measures of 4 synthetic images against 6 real")).to_be_visible(
        timeout=120_000
    )
    row = page.get_by_role("row", name=re.compile("^xrv-densenet121"))
    expect(row).to_contain_text("224 px, weights sha256")
    # The two copies, each beside its training original and beside the same phantom among the
    # references (make_real_set draws the same phantoms).
    expect(page.get_by_role("heading", name="Possible copies (4)")).to_be_visible()
    pairs = page.locator("figure.copy-pair")
    expect(pairs).to_have_count(4)
    for index in range(4):
        for image in pairs.nth(index).locator("img").all():
            expect(image).to_have_js_property("complete", True)
            assert image.evaluate("img => img.naturalWidth") > 0
    expect(pairs.first).to_contain_text(f"training image {training[2].pk}")
    job.refresh_from_db()
    assert job.status == "done" and job.done == job.total == 16


def test_a_researcher_measures_a_study_and_its_copies_then_warn_at_open(
    weights, trained_version, tabs, researcher, celery_workers, settings
):
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")  # XRV alone: quicker
    study, real, synthetic = study_with_copies(trained_version)
    celery_workers.start()
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    page.get_by_role("button", name="Measure realism").click()
    job = MeasureJob.objects.get()
    assert (job.study, job.version) == (study, None)
    expect(page).to_have_url(re.compile(rf"/admin/generation/measurejob/{job.pk}/change/$"))
    expect(
        page.get_by_role("heading", name="Arm cxr-trained: Measures of 4 synthetic images against 6 real")
    ).to_be_visible(timeout=120_000)
    expect(
        page.get_by_role("heading", name="Arm cxr-other: Measures of 3 synthetic images against 6 real")
    ).to_be_visible()
    expect(page.get_by_role("heading", name="Possible copies in cxr-trained (4)")).to_be_visible()
    expect(page.locator("figure.copy-pair")).to_have_count(4)

    # Back on the study: the audit, run again, lists the flagged images; opening needs a reason.
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    expect(page.get_by_text(f"Latest: measure job {job.pk}, done")).to_be_visible()
    page.get_by_role("button", name="Run the audit again").click()
    table = page.get_by_role("table", name="Synthetic images flagged as possible copies of real radiographs")
    expect(table.locator("tbody tr")).to_have_count(4)
    expect(table).to_contain_text(f"{real[2].pk} (reference)")
    expect(
        page.get_by_text(re.compile(r"2 synthetic images of the study \(images \d+, \d+\) flagged"))
    ).to_be_visible()
    page.get_by_label("The audit warns. To open anyway, give a reason").fill(
        "Copies judged different by hand"
    )
    page.get_by_role("button", name="Open anyway").click()
    expect(page.get_by_text("The study is open: its readers can start.")).to_be_visible()
    study.refresh_from_db()
    assert study.status == "open" and study.override_reason == "Copies judged different by hand"
    flagged = {(row["image"], row["kind"]) for row in study.audit_report["possible_copies"]}
    assert flagged == {
        (image.pk, kind) for image in (synthetic[0], synthetic[2]) for kind in ("training", "reference")
    }


def test_a_researcher_cancels_and_retries_a_measure_job_from_its_page(trained_version, tabs, researcher):
    version, _ = trained_version
    celery_app.control.purge()
    job = measure_job_create(version=version, reference_sets=[make_real_set(3, name="refs")])
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    try:
        page.goto(f"{tab.base_url}/admin/generation/measurejob/{job.pk}/change/")
        expect(page.get_by_text("Waiting for a GPU worker.")).to_be_visible()
        page.get_by_role("button", name="Cancel").click()
        expect(
            page.get_by_text("Cancelled: the worker stops after its current batch of images.")
        ).to_be_visible()
        job.refresh_from_db()
        assert job.status == "cancelled"
        page.get_by_role("button", name="Retry").click()
        expect(page.get_by_text("Queued again (attempt 2); it starts from the beginning.")).to_be_visible()
        job.refresh_from_db()
        assert (job.status, job.attempt) == ("queued", 2)
        assert queue_lengths()["gpu"] == 2  # the first task, never run, and the retry's
    finally:
        celery_app.control.purge()
