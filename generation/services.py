"""Writes of the generation app."""

import uuid

from .models import WorkerReport


def describe_device() -> tuple[str, str]:
    """The device a worker would generate on, and the torch version, as text.

    torch is imported here, inside the worker's child process, never at module
    import: CUDA must not be initialised in the prefork parent.
    """
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}", torch.__version__
    return "cpu", torch.__version__


def worker_report_create(*, request_id: str, hostname: str) -> WorkerReport:
    device, torch_version = describe_device()
    report, _ = WorkerReport.objects.get_or_create(
        request_id=request_id,
        hostname=hostname,
        defaults={"device": device, "torch_version": torch_version},
    )
    return report


def worker_reports_request() -> uuid.UUID:
    """Ask a worker on the `gpu` queue to report; returns the request's id.

    Like every task of this app, it is sent only once the surrounding transaction
    commits, so a worker never looks for rows that are not there yet.
    """
    from .tasks import report_worker

    request_id = uuid.uuid4()
    report_worker.delay_on_commit(str(request_id))
    return request_id
