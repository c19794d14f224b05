"""/healthz tells monitors whether the database, the broker and a worker are up."""

import pytest

from config.celery import app as celery_app


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
        "checks": {"database": "ok", "broker": "ok", "worker": body["checks"]["worker"]},
    }
    assert body["checks"]["worker"].startswith("ok: ")


@pytest.mark.django_db
def test_it_answers_only_get(client):
    assert client.post("/healthz").status_code == 405
