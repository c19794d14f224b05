"""The whole wiring, for real: web process, Redis, a Celery worker, PostgreSQL."""

import time

import pytest

from generation.models import WorkerReport
from generation.services import worker_reports_request


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout} s")


@pytest.mark.services
def test_a_real_worker_runs_a_task_that_writes_a_row(celery_worker_process):
    request_id = worker_reports_request()
    report = wait_for(lambda: WorkerReport.objects.filter(request_id=request_id).first())
    assert report.hostname == celery_worker_process.split("@", 1)[1]
    assert report.device == "cpu"
    assert report.torch_version.startswith("2.")


@pytest.mark.services
def test_the_admin_button_asks_a_worker_and_its_report_is_listed(client, researcher, celery_worker_process):
    client.force_login(researcher)
    response = client.post("/admin/generation/workerreport/ask/", follow=True)
    assert "Asked a GPU worker to report" in response.content.decode()
    wait_for(lambda: WorkerReport.objects.exists())
    page = client.get("/admin/generation/workerreport/").content.decode()
    assert "cpu" in page


def test_a_task_delivered_twice_makes_one_report(db):
    from generation.services import worker_report_create

    first = worker_report_create(request_id="8f1e4a52-6c2e-4f8e-9d8b-0d5c7f3a1b2c", hostname="gpu-1")
    again = worker_report_create(request_id="8f1e4a52-6c2e-4f8e-9d8b-0d5c7f3a1b2c", hostname="gpu-1")
    assert first.pk == again.pk
    assert WorkerReport.objects.count() == 1
