"""/healthz tells monitors whether the database, the broker, the storage and a worker are up."""

import pytest
from botocore.config import Config
from django.conf import settings

from config.celery import app as celery_app
from config.storage import storage_from_url


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


@pytest.mark.services
def test_it_is_all_ok_when_a_worker_answers(client, celery_worker_process):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "status": "ok",
        "down": [],
        "checks": {
            "database": "ok",
            "broker": "ok",
            "worker": body["checks"]["worker"],
            "storage": "ok: object storage" if settings.TEST_STORAGE == "s3" else "ok: filesystem",
        },
    }
    assert body["checks"]["worker"].startswith("ok: ")


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
