"""Workers and queues in the admin, in Chromium: who answers, what each is doing, what waits."""

import re

import pytest
from playwright.sync_api import expect

from generation.jobs import job_cancel, job_launch
from generation.models import GenerationJob, WorkerReport
from generation.services import model_register, worker_reports_request
from tests.conftest import wait_until
from tests.generation.models import built
from tests.generation.test_training_admin import admin_log_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.browser
@pytest.mark.services
def test_the_admin_shows_queue_lengths_workers_and_what_they_run(tabs, researcher, celery_workers):
    tab = tabs()
    admin_log_in(tab)
    page = tab.page
    for _ in range(3):
        worker_reports_request()  # three tasks on the gpu queue, which no worker consumes yet
    page.get_by_role("link", name="Worker reports").click()
    expect(page.get_by_role("heading", name="Workers and queues")).to_be_visible()
    expect(page.locator('#queue-lengths tr[data-queue="gpu"] td').nth(1)).to_have_text("3")
    expect(page.locator('#queue-lengths tr[data-queue="default"] td').nth(1)).to_have_text("0")
    expect(page.get_by_text("No worker answered within a second")).to_be_visible()

    # A worker starts: it takes the waiting tasks, and a long generation job keeps it busy.
    model = model_register(name="slow", path=str(built("ddpm")), steps=1000, batch_size=2)
    hostname, _ = celery_workers.start()
    wait_until(lambda: WorkerReport.objects.count() == 3, timeout=60, what="three reports")
    job = job_launch(version=model.current_version, count=8)
    wait_until(
        lambda: GenerationJob.objects.filter(pk=job.pk, status="running").exists(), timeout=60, what="running"
    )
    row = page.locator(f'#workers-now tr[data-worker="{hostname}"]')
    for _ in range(30):  # the page asks the workers as it is shown: reload until it is busy
        page.reload()
        if row.get_by_role("link").count():
            break
    expect(row.locator("td").nth(1)).to_have_text("default, gpu")
    link = row.get_by_role("link", name=re.compile(rf"generation job {job.pk}: seeds \d+ to \d+"))
    expect(link).to_be_visible()
    expect(page.locator('#queue-lengths tr[data-queue="gpu"] td').nth(1)).to_have_text(re.compile(r"\d+"))
    link.click()
    expect(page).to_have_url(re.compile(rf"/admin/generation/generationjob/{job.pk}/change/$"))
    job_cancel(job=job)
    # Showing the page changed nothing: the job is as the test left it, the reports as the worker made them.
    job.refresh_from_db()
    assert job.status == "cancelled" and WorkerReport.objects.count() == 3
