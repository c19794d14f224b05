"""Celery tasks of the studies app (on the `default` queue)."""

import logging

from celery import shared_task

from .imports import import_job_run
from .lifecycle import study_preparation_check
from .models import Study

logger = logging.getLogger(__name__)


@shared_task
def run_import_job(job_id: int) -> None:
    import_job_run(job_id=job_id)


@shared_task
def preparation_advance(study_id: int) -> None:
    """Draw a preparing study's images if its models now have them all (see lifecycle).

    A draw that fails (an image file gone, say) leaves the study preparing with the
    reason on it, for its page; beat tries again each period.
    """
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return
    try:
        study_preparation_check(study=study)
    except Exception as exc:
        logger.exception("Drawing the images of study %s failed", study_id)
        Study.objects.filter(pk=study_id, status=Study.Status.PREPARING).update(
            preparation_error=f"Drawing the images failed on a worker: {exc}"
        )


@shared_task
def preparations_advance() -> None:
    """Beat's safety net: a preparing study whose message was lost still moves on."""
    for study_id in Study.objects.filter(status=Study.Status.PREPARING).values_list("pk", flat=True):
        preparation_advance.delay(study_id)


def preparations_after_job(*, job, **kwargs) -> None:
    """Receives generation's `job_done`: the studies waiting on that job move on, on the default queue.

    It runs on the GPU worker that made the job's last image, so it only sends
    messages; the draw and the blinding audit run on a `default` worker.
    """
    waiting = Study.objects.filter(status=Study.Status.PREPARING, arms__job=job).distinct()
    for study_id in waiting.values_list("pk", flat=True):
        preparation_advance.delay_on_commit(study_id)
