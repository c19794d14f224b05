"""Celery tasks of the generation app; every task here runs on the `gpu` queue."""

import socket

from celery import shared_task

from .services import worker_report_create


@shared_task
def report_worker(request_id: str) -> None:
    """Record which host and device this worker has (see WorkerReport)."""
    worker_report_create(request_id=request_id, hostname=socket.gethostname())
