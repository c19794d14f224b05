"""Cases found in review: scheduler leaks, frozen versions, stale jobs and tasks, races."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from generation import pipelines
from generation.jobs import MAX_RESENDS, chunk_run, job_launch, job_retry, jobs_sweep
from generation.models import GeneratedImage, GenerationJob
from generation.registry import ModelRefused
from generation.services import model_register, model_settings_update
from tests.conftest import stored_names
from tests.generation.models import built
from tests.generation.test_generate import make_images, pixels_by_seed

SD = {"prompts": ["chest x ray"], "size": 32, "steps": 2}


@pytest.mark.django_db
def test_a_models_own_scheduler_never_leaks_from_another_model_on_the_same_pipeline():
    own = model_register(name="own", path=str(built("sd-clip")), **SD)
    make_images(own, count=1, seed=3)
    first = pixels_by_seed(own)[3]
    euler = model_register(name="euler", path=str(built("sd-clip")), scheduler="euler", **SD)
    make_images(euler, count=1, seed=3)
    again = model_register(name="own-again", path=str(built("sd-clip")), **SD)
    make_images(again, count=1, seed=3)
    assert (
        GeneratedImage.objects.get(version__model=euler).provenance["scheduler"] == "EulerDiscreteScheduler"
    )
    assert GeneratedImage.objects.get(version__model=again).provenance["scheduler"] == "DDIMScheduler"
    assert pixels_by_seed(again)[3] == first


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddpm", "DDPMScheduler"),
        ("dpmpp", "DPMSolverMultistepScheduler"),
        ("unipc", "UniPCMultistepScheduler"),
        ("euler", "EulerDiscreteScheduler"),
    ],
)
def test_a_named_scheduler_is_the_one_used(name, cls):
    model = model_register(name=name, path=str(built("sd-clip")), scheduler=name, **SD)
    job = make_images(model, count=1)
    assert job.status == "done", job.error
    assert GeneratedImage.objects.get().provenance["scheduler"] == cls


@pytest.mark.django_db
@pytest.mark.parametrize("kind, scheduler", [("ddim", "dpmpp"), ("flux", "euler"), ("ddpm", "euler")])
def test_a_scheduler_the_pipeline_cannot_drive_is_refused(kind, scheduler):
    options = {"prompts": ["x"], "size": 32} if kind == "flux" else {}
    with pytest.raises(ModelRefused, match=f"cannot run the '{scheduler}' scheduler"):
        model_register(name="x", path=str(built(kind)), scheduler=scheduler, **options)


@pytest.mark.django_db
def test_settings_are_frozen_once_a_job_is_queued():
    model = model_register(name="queued", path=str(built("ddpm")), steps=2)
    job = job_launch(version=model.current_version, count=2)
    newer = model_settings_update(model=model, steps=5)
    assert newer.number == 2
    job.refresh_from_db()
    assert job.version.number == 1 and job.version.steps == 2


@pytest.mark.django_db
def test_a_running_job_that_no_worker_touches_is_failed_by_the_sweep_and_can_be_retried(settings):
    celery_app.control.purge()  # nothing waits in the queue: the job's chunks are lost
    model = model_register(name="stale", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=2)
    chunk_run(job_id=job.pk, seeds=[0])  # the chunk of seed 1 is lost with its worker
    # ... and was sent again as often as the sweep does (tests/generation/test_lost_chunks.py).
    GenerationJob.objects.filter(pk=job.pk).update(
        resends=MAX_RESENDS,
        heartbeat=timezone.now() - timedelta(seconds=settings.GENERATION_SILENCE_SECONDS + 1),
    )
    assert jobs_sweep() == 1
    job.refresh_from_db()
    assert job.status == "failed" and "1 image(s) are missing" in job.error and "Retry" in job.error
    assert job_retry(job=job)
    job.refresh_from_db()
    chunk_run(job_id=job.pk, seeds=[1], attempt=job.attempt)
    job.refresh_from_db()
    assert job.status == "done" and GeneratedImage.objects.count() == 2


@pytest.mark.django_db
def test_the_sweep_leaves_queued_and_recently_active_jobs_alone():
    model = model_register(name="fresh", path=str(built("ddpm")), steps=2, batch_size=1)
    queued = job_launch(version=model.current_version, count=1)
    running = job_launch(version=model.current_version, count=2)
    GenerationJob.objects.filter(pk=running.pk).update(status="running", heartbeat=timezone.now())
    assert jobs_sweep() == 0
    assert GenerationJob.objects.get(pk=queued.pk).status == "queued"


@pytest.mark.django_db
def test_tasks_of_an_earlier_attempt_stand_down_after_a_retry():
    model = model_register(name="attempts", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=1)
    GenerationJob.objects.filter(pk=job.pk).update(status="cancelled")
    assert job_retry(job=job)
    chunk_run(job_id=job.pk, seeds=[0], attempt=1)  # the old message, still in the queue
    assert not GeneratedImage.objects.exists()
    chunk_run(job_id=job.pk, seeds=[0], attempt=2)
    assert GeneratedImage.objects.count() == 1


@pytest.mark.django_db
def test_a_chunk_that_keeps_killing_its_worker_fails_the_job():
    model = model_register(name="crashy", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=1)
    GenerationJob.objects.filter(pk=job.pk).update(deliveries={"0": 3})  # three deliveries that died
    chunk_run(job_id=job.pk, seeds=[0])
    job.refresh_from_db()
    assert job.status == "failed" and "ended its worker 3 times" in job.error
    assert not GeneratedImage.objects.exists()


@pytest.mark.django_db
def test_a_failed_call_drops_the_pipeline_from_the_cache():
    model = model_register(name="drop", path=str(built("ddpm")), steps=2)
    loaded = pipelines.pipeline_for(model.current_version)
    pipelines.forget(loaded)
    assert pipelines.pipeline_for(model.current_version) is not loaded


@pytest.mark.django_db
def test_the_admin_shows_bad_settings_on_the_form(client, researcher):
    from tests.generation.test_admin import FORM

    client.force_login(researcher)
    client.post(
        "/admin/generation/generativemodel/add/",
        {**FORM, "name": "f", "path": str(built("sd-clip")), "prompts": "x"},
    )
    model = model_register.__globals__["GenerativeModel"].objects.get(name="f")
    url = f"/admin/generation/generativemodel/{model.pk}/change/"
    response = client.post(url, {**FORM, "name": "f", "prompts": "", "size": 0})
    assert (
        response.status_code == 200
        and "A text-to-image model needs at least one prompt." in response.content.decode()
    )
    response = client.post(url, {**FORM, "name": "f", "prompts": "x", "size": 5})
    assert response.status_code == 200 and "size must be between 16 and 4096" in response.content.decode()


def in_threads(target, n=2):
    errors = []

    def run():
        try:
            target()
        except Exception as exc:  # collected, then raised in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_a_chunk_at_once_make_each_image_once_and_leave_no_stray_file():
    model = model_register(name="race", path=str(built("ddpm")), steps=2, batch_size=4)
    job = job_launch(version=model.current_version, count=4)
    in_threads(lambda: chunk_run(job_id=job.pk, seeds=[0, 1, 2, 3]))
    images = GeneratedImage.objects.filter(version=model.current_version)
    assert sorted(images.values_list("seed", flat=True)) == [0, 1, 2, 3]
    assert stored_names("images") == {g.image.file.name for g in images.select_related("image")}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_jobs_launched_at_the_same_moment_get_different_seeds():
    model = model_register(name="launch-race", path=str(built("ddpm")), steps=2)
    in_threads(lambda: job_launch(version=model.current_version, count=5))
    starts = sorted(GenerationJob.objects.values_list("base_seed", flat=True))
    assert starts == [0, 5]
