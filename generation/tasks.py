"""Celery tasks of the generation app: on the `gpu` queue, but for the sweep (see config/celery.py)."""

import socket

from celery import shared_task

from .jobs import chunk_run, jobs_sweep
from .services import worker_report_create


@shared_task
def report_worker(request_id: str) -> None:
    """Record which host and device this worker has (see WorkerReport)."""
    worker_report_create(request_id=request_id, hostname=socket.gethostname())


@shared_task
def generate_chunk(job_id: int, seeds: list[int], attempt: int = 1) -> None:
    """Make one batch of a generation job (see generation.jobs)."""
    chunk_run(job_id=job_id, seeds=seeds, attempt=attempt)


@shared_task
def sweep_jobs() -> int:
    """Send again the lost chunks of generation jobs (failing a job that keeps losing them) and
    resume the training and measure jobs that no worker works on any more (run by beat; needs
    no GPU)."""
    from .measure_jobs import measure_sweep  # it queues `measure`, from this module
    from .training_jobs import training_sweep

    return jobs_sweep() + training_sweep() + measure_sweep()


@shared_task
def train(job_id: int, attempt: int = 1) -> None:
    """Run or resume a training job; a task that used its share of the time limit queues the next.

    A task of an earlier attempt (before a retry or a sweep) stands down.
    """
    # Imported here, in the worker's child process: generation.training imports torch, which
    # must not be initialised in the prefork parent (see describe_device).
    from .training import training_run

    if training_run(job_id=job_id, attempt=attempt) == "pause":
        train.delay(job_id, attempt)


@shared_task
def measure(job_id: int, attempt: int = 1) -> None:
    """Compute a measuring job's machine measures (see generation.measure_jobs); a task of an
    earlier attempt (before a retry or a sweep) stands down."""
    from .measure_jobs import measure_run  # imports torch where it runs: in the worker's child

    measure_run(job_id=job_id, attempt=attempt)
