"""Periodic work runs on Celery beat's schedule, never in a page: stuck jobs, preparing studies."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from config.celery import app as celery_app
from generation.jobs import MAX_RESENDS
from generation.models import GenerationJob
from studies.models import ImageSet, Study, StudyModel
from tests.conftest import wait_until
from tests.studies.study_fixtures import fixture_version, make_images


def test_beat_keeps_its_schedule_file_under_var_dir_and_names_the_periodic_tasks():
    assert celery_app.conf.beat_schedule_filename == str(settings.VAR_DIR / "celerybeat-schedule")
    tasks = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert tasks == {"generation.tasks.sweep_jobs", "studies.tasks.preparations_advance"}
    assert celery_app.amqp.router.route({}, "generation.tasks.sweep_jobs")["queue"].name == "default"


@pytest.mark.services
def test_beat_fails_a_stuck_job_and_moves_on_a_study_whose_message_was_lost(celery_workers):
    make_images(4, models=["cxr-diffusion"])  # two real, two synthetic
    version = fixture_version("cxr-diffusion")
    # Left preparing with every image there, as if the message after its job was lost.
    study = Study.objects.create(
        title="Lost message", real_count=2, status=Study.Status.PREPARING, selection_seed=7
    )
    study.real_sets.add(ImageSet.objects.get(name="fixture set"))
    StudyModel.objects.create(study=study, model=version.model, version=version, count=2)
    # A job whose chunk died with its worker, sent again as often as the sweep does, untouched since.
    untouched = timezone.now() - timedelta(seconds=settings.GENERATION_SILENCE_SECONDS + 120)
    stuck = GenerationJob.objects.create(
        version=version,
        count=1,
        base_seed=100,
        status=GenerationJob.Status.RUNNING,
        heartbeat=untouched,
        resends=MAX_RESENDS,
    )

    celery_workers.start(beat=True, CELERY_BEAT_SECONDS="1")

    wait_until(
        lambda: GenerationJob.objects.get(pk=stuck.pk).status == GenerationJob.Status.FAILED,
        timeout=60,
        what="The sweep of the stuck job",
    )
    assert "1 image(s) are missing" in GenerationJob.objects.get(pk=stuck.pk).error
    wait_until(lambda: Study.objects.get(pk=study.pk).status == Study.Status.READY, timeout=60, what="Ready")
    assert study.images.count() == 4
