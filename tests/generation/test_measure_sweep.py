"""Measure jobs that lose their task or their worker, and Cancel and Retry: the job's body runs in
the test's process (as a redelivered task would on a worker); the sweep is beat's, called here."""

import threading

import pytest
from django.db import connections
from django.utils import timezone

from generation.measure_jobs import (
    MAX_RESUMES,
    measure_cancel,
    measure_job_create,
    measure_retry,
    measure_run,
    measure_sweep,
)
from generation.models import MeasureJob
from generation.operations import queue_lengths
from tests.conftest import wait_until
from tests.studies.study_fixtures import make_real_set

LONG_AGO = timezone.timedelta(seconds=600)


def now(job) -> MeasureJob:
    return MeasureJob.objects.get(pk=job.pk)


@pytest.fixture
def job(weights, trained_version, settings):
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")  # XRV alone: quicker
    version, _ = trained_version
    return measure_job_create(version=version, reference_sets=[make_real_set(6, name="refs")])


@pytest.mark.django_db
def test_a_cancelled_or_superseded_task_stands_down_and_retry_starts_again(job):
    assert measure_cancel(job=job)
    measure_run(job_id=job.pk, attempt=1)
    assert (now(job).status, now(job).done, now(job).results) == ("cancelled", 0, {})
    assert measure_retry(job=now(job))
    retried = now(job)
    assert (retried.status, retried.attempt, retried.finished) == ("queued", 2, None)
    measure_run(job_id=job.pk, attempt=1)  # the first attempt's task, delivered late
    assert now(job).status == "queued"
    measure_run(job_id=job.pk, attempt=2)
    done = now(job)
    assert done.status == "done" and done.done == done.total == 16
    assert not measure_retry(job=done) and not measure_cancel(job=done)


@pytest.mark.django_db
def test_a_second_delivery_stands_down_while_the_worker_reports_and_takes_over_once_it_is_silent(
    job, settings
):
    MeasureJob.objects.filter(pk=job.pk).update(status="running", heartbeat=timezone.now())
    measure_run(job_id=job.pk, attempt=1)  # e.g. a Redis redelivery while the first still runs
    assert (now(job).status, now(job).results) == ("running", {})
    MeasureJob.objects.filter(pk=job.pk).update(heartbeat=timezone.now() - LONG_AGO)
    measure_run(job_id=job.pk, attempt=1)  # its worker died: the redelivery computes it
    assert now(job).status == "done" and now(job).results["n_synthetic"] == 4


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_running_job_after_its_current_batch(job):
    def work():
        try:
            measure_run(job_id=job.pk, attempt=1)
        finally:
            connections.close_all()  # this thread's own connection

    running = threading.Thread(target=work)
    running.start()
    try:
        wait_until(lambda: now(job).done > 0, timeout=120, what="a first batch through the extractor")
        assert measure_cancel(job=job)
    finally:
        running.join(timeout=120)
    stopped = now(job)
    assert not running.is_alive()
    assert stopped.status == "cancelled" and stopped.done < stopped.total and stopped.results == {}


@pytest.mark.django_db
@pytest.mark.services
def test_the_sweep_sends_silent_jobs_again_leaves_reporting_ones_and_gives_up_after_its_resumes(
    job, settings, empty_queues
):
    settings.GENERATION_SILENCE_SECONDS = 60
    reporting = MeasureJob.objects.create(
        version=job.version, extractors=job.extractors, status="running", heartbeat=timezone.now()
    )
    MeasureJob.objects.filter(pk=job.pk).update(status="running", heartbeat=timezone.now() - LONG_AGO)
    lost_queued = MeasureJob.objects.create(version=job.version, extractors=job.extractors)
    MeasureJob.objects.filter(pk=lost_queued.pk).update(created=timezone.now() - LONG_AGO)
    assert queue_lengths()["gpu"] == 0
    assert measure_sweep() == 2
    assert (now(job).status, now(job).attempt, now(job).resumes) == ("queued", 2, 1)
    assert (now(lost_queued).status, now(lost_queued).attempt) == ("queued", 2)
    assert now(reporting).attempt == 1
    assert measure_sweep() == 0  # sending again is a sign of life: the clock starts again
    MeasureJob.objects.filter(pk=job.pk).update(
        status="running", heartbeat=timezone.now() - LONG_AGO, resumes=MAX_RESUMES
    )
    assert measure_sweep() == 1
    gave_up = now(job)
    assert gave_up.status == "failed" and f"{MAX_RESUMES + 1} times" in gave_up.error
    measure_run(job_id=job.pk, attempt=2)  # the resent task, delivered after all, stands down
    assert now(job).status == "failed"
