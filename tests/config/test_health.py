"""/healthz tells monitors whether the database, the broker, the storage and a worker are up,
and which jobs stall."""

from datetime import timedelta

import pytest
from botocore.config import Config
from django.utils import timezone

from config.celery import app as celery_app
from config.health import stalled_jobs
from config.storage import storage_from_url
from generation.models import GenerationJob, TrainingJob
from generation.tasks import generate_chunk
from tests.studies.study_fixtures import fixture_version


@pytest.mark.django_db
def test_it_needs_no_login_and_names_the_missing_worker(client):
    celery_app.control.purge()
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["down"] == ["worker"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "ok"
    assert "no worker answered" in body["checks"]["worker"]
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_it_names_a_broker_that_is_down_without_revealing_its_address(client, monkeypatch):
    # Port 1 on the loopback: nothing listens there, a real refused connection.
    monkeypatch.setitem(celery_app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["broker", "worker"]
    assert body["checks"]["worker"] == "not checked: the broker is down"
    assert "127.0.0.1" not in response.content.decode()


def silent_for(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def stalled_generation_job(settings, **fields):
    """A job no worker has touched for longer than the sweep needed to send it again."""
    grace = settings.GENERATION_SILENCE_SECONDS + settings.CELERY_BEAT_SECONDS
    return GenerationJob.objects.create(
        version=fixture_version("cxr-diffusion"), count=4, heartbeat=silent_for(grace + 60), **fields
    )


@pytest.mark.services
def test_it_is_all_ok_when_a_worker_answers_and_degraded_naming_the_jobs_that_stall(
    client, celery_worker_process, settings
):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "status": "ok",
        "down": [],
        "stalled": [],
        "checks": {
            "database": "ok",
            "broker": "ok",
            "worker": body["checks"]["worker"],
            "storage": "ok: object storage" if settings.TEST_STORAGE == "s3" else "ok: filesystem",
            "jobs": "ok",
        },
    }
    assert body["checks"]["worker"].startswith("ok: ")

    job = stalled_generation_job(settings, status="running")
    training = TrainingJob.objects.create(
        name="stalled", steps=10, batch_size=1, learning_rate=1e-4, resolution=32, status="running",
        heartbeat=silent_for(settings.TRAINING_SILENCE_SECONDS + settings.CELERY_BEAT_SECONDS + 60),
    )  # fmt: skip
    response = client.get("/healthz")
    assert response.status_code == 200  # the web servers are fine: a balancer must keep them
    body = response.json()
    assert body["status"] == "degraded" and body["down"] == []
    assert [name.split(" (")[0] for name in body["stalled"]] == [
        f"generation job {job.pk}",
        f"training job {training.pk}",
    ]
    assert body["checks"]["jobs"].startswith(f"stalled: generation job {job.pk} (silent ")


@pytest.mark.django_db
def test_a_silent_job_waiting_behind_others_on_a_busy_queue_is_not_stalled(settings):
    celery_app.control.purge()
    waiting = stalled_generation_job(settings, status="queued")
    assert [name.split(" (")[0] for name in stalled_jobs()] == [f"generation job {waiting.pk}"]
    generate_chunk.apply_async((waiting.pk + 1000, [0], 1))  # a task waits in the gpu queue ...
    assert stalled_jobs() != []  # ... but nothing moves: no worker takes from the queue
    GenerationJob.objects.create(version=waiting.version, count=1, base_seed=10, heartbeat=timezone.now())
    assert stalled_jobs() == []  # a worker is busy on another job: the silent one waits its turn
    celery_app.control.purge()
    assert stalled_jobs() != []  # nothing waits, yet it is silent: its chunks are lost


@pytest.mark.django_db
def test_it_names_object_storage_that_does_not_answer_without_its_address(client, settings):
    # Port 9 on the loopback: nothing listens there, a real refused connection.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": storage_from_url("s3+http://AK:SK@127.0.0.1:9/bucket"),
    }
    settings.STORAGES["default"]["OPTIONS"]["client_config"] = Config(retries={"max_attempts": 1})
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert "storage" in body["down"] and body["checks"]["storage"] == "EndpointConnectionError"
    assert "127.0.0.1" not in response.content.decode()


@pytest.mark.django_db
def test_a_media_folder_that_cannot_be_written_is_down(client, settings, filesystem_storage):
    filesystem_storage.parent.mkdir(parents=True, exist_ok=True)
    filesystem_storage.write_text("a file where the folder should be")
    body = client.get("/healthz").json()
    assert "storage" in body["down"]
    assert body["checks"]["storage"] == "the media folder is not a writable folder"


@pytest.mark.django_db
def test_it_answers_only_get(client):
    assert client.post("/healthz").status_code == 405
