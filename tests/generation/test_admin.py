"""Researchers register models, preview, generate and follow jobs in the admin."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import GeneratedImage, GenerationJob, GenerativeModel
from tests.generation.models import built
from tests.generation.test_generate import run_job

pytestmark = pytest.mark.django_db

FORM = {
    "description": "",
    "lora_path": "",
    "scheduler": "",
    "steps": 2,
    "guidance": 7.5,
    "size": 0,
    "prompts": "",
    "negative_prompt": "",
    "lora_scale": 1.0,
    "dtype": "auto",
    "batch_size": 2,
}


def test_a_researcher_registers_a_model_in_the_admin(client, researcher):
    client.force_login(researcher)
    response = client.post(
        "/admin/generation/generativemodel/add/", {**FORM, "name": "admin-ddpm", "path": str(built("ddpm"))}
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    model = GenerativeModel.objects.get(name="admin-ddpm")
    assert model.pipeline_class == "DDPMPipeline" and model.current_version.steps == 2
    page = client.get(f"/admin/generation/generativemodel/{model.pk}/change/").content.decode()
    assert "Stored as" in page and model.digest in page


def test_the_admin_shows_why_a_model_is_refused(client, researcher, tmp_path):
    client.force_login(researcher)
    response = client.post(
        "/admin/generation/generativemodel/add/", {**FORM, "name": "x", "path": str(tmp_path)}
    )
    assert response.status_code == 200
    assert "has no model_index.json" in response.content.decode()
    response = client.post(
        "/admin/generation/generativemodel/add/", {**FORM, "name": "y", "path": str(built("sd-clip"))}
    )
    assert "A text-to-image model needs at least one prompt." in response.content.decode()
    assert not GenerativeModel.objects.exists()


def test_editing_settings_after_images_makes_a_new_version(client, researcher):
    client.force_login(researcher)
    client.post("/admin/generation/generativemodel/add/", {**FORM, "name": "m", "path": str(built("ddpm"))})
    model = GenerativeModel.objects.get()
    client.post(f"/admin/generation/generativemodel/{model.pk}/preview/")
    run_job(GenerationJob.objects.get())
    page = client.get(f"/admin/generation/generativemodel/{model.pk}/change/").content.decode()
    assert page.count("/admin/studies/image/") >= 4 and "Preview (seeds 0 to 3" in page
    response = client.post(
        f"/admin/generation/generativemodel/{model.pk}/change/",
        {**FORM, "name": "m", "description": "now 3 steps", "steps": 3},
    )
    assert response.status_code == 302
    assert model.versions.count() == 2 and model.current_version.steps == 3


def test_the_preview_button_makes_a_job_of_four_and_shows_its_images(client, researcher):
    client.force_login(researcher)
    client.post("/admin/generation/generativemodel/add/", {**FORM, "name": "p", "path": str(built("ddpm"))})
    model = GenerativeModel.objects.get()
    response = client.post(f"/admin/generation/generativemodel/{model.pk}/preview/")
    job = GenerationJob.objects.get()
    assert (job.count, job.base_seed, job.is_preview) == (4, 0, True)
    queued = client.get(response["Location"]).content.decode()
    assert "Waiting for a GPU worker" in queued and 'http-equiv="refresh"' in queued
    run_job(job)
    done = client.get(response["Location"]).content.decode()
    assert "4 of 4 images" in done and "images/s" in done and done.count('alt="seed') == 4
    assert 'http-equiv="refresh"' not in done


def test_the_generate_form_launches_a_job(client, researcher):
    client.force_login(researcher)
    client.post("/admin/generation/generativemodel/add/", {**FORM, "name": "g", "path": str(built("ddpm"))})
    model = GenerativeModel.objects.get()
    assert client.get(f"/admin/generation/generativemodel/{model.pk}/generate/").status_code == 200
    response = client.post(
        f"/admin/generation/generativemodel/{model.pk}/generate/", {"count": 6, "seed": 40}
    )
    job = GenerationJob.objects.get()
    assert response["Location"].endswith(f"/generationjob/{job.pk}/change/")
    assert (job.count, job.base_seed) == (6, 40)


def test_jobs_are_cancelled_and_retried_from_the_list(client, researcher):
    client.force_login(researcher)
    client.post("/admin/generation/generativemodel/add/", {**FORM, "name": "c", "path": str(built("ddpm"))})
    model = GenerativeModel.objects.get()
    client.post(f"/admin/generation/generativemodel/{model.pk}/generate/", {"count": 2, "seed": 0})
    job = GenerationJob.objects.get()
    response = client.post(
        "/admin/generation/generationjob/", {"action": "cancel", "_selected_action": [job.pk]}, follow=True
    )
    assert "1 job(s) cancelled." in response.content.decode()
    response = client.post(
        "/admin/generation/generationjob/", {"action": "retry", "_selected_action": [job.pk]}, follow=True
    )
    assert "1 job(s) queued again." in response.content.decode()
    run_job(job)
    assert GeneratedImage.objects.count() == 2
    assert "<progress" in client.get("/admin/generation/generationjob/").content.decode()


def test_looking_at_the_jobs_never_fails_a_stuck_one(client, researcher, settings):
    client.force_login(researcher)
    client.post("/admin/generation/generativemodel/add/", {**FORM, "name": "s", "path": str(built("ddpm"))})
    model = GenerativeModel.objects.get()
    client.post(f"/admin/generation/generativemodel/{model.pk}/generate/", {"count": 1, "seed": 0})
    untouched = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 120)
    GenerationJob.objects.update(status="running", heartbeat=untouched)
    job = GenerationJob.objects.get()
    assert client.get("/admin/generation/generationjob/").status_code == 200
    assert client.get(f"/admin/generation/generationjob/{job.pk}/change/").status_code == 200
    job.refresh_from_db()
    assert job.status == "running"  # beat's sweep fails it (tests/config/test_beat.py), not a page


def test_readers_cannot_reach_the_generation_admin(client, reader):
    client.force_login(reader)
    for url in ["/admin/generation/generativemodel/", "/admin/generation/generativemodel/1/generate/"]:
        assert client.get(url).status_code == 302
