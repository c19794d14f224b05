"""Celery tasks of the studies app (on the `default` queue)."""

from celery import shared_task

from .imports import import_job_run


@shared_task
def run_import_job(job_id: int) -> None:
    import_job_run(job_id=job_id)
