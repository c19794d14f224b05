"""Celery tasks of the generation app; every task here runs on the `gpu` queue."""

import socket

from celery import shared_task

from .jobs import chunk_run
from .services import worker_report_create


@shared_task
def report_worker(request_id: str) -> None:
    """Record which host and device this worker has (see WorkerReport)."""
    worker_report_create(request_id=request_id, hostname=socket.gethostname())


@shared_task
def generate_chunk(job_id: int, seeds: list[int], attempt: int = 1) -> None:
    """Make one batch of a generation job (see generation.jobs)."""
    chunk_run(job_id=job_id, seeds=seeds, attempt=attempt)
