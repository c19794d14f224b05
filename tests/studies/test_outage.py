"""A database outage: every request answers 503 with Retry-After, logged once, and nothing is lost."""

import json
import logging

import psycopg2
import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import Client, RequestFactory

from config import outage
from studies.models import Answer, Presentation
from tests.studies.outage import admin_connection_kwargs, database_outage
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


@pytest.fixture(autouse=True)
def fresh_outage_log(monkeypatch):
    monkeypatch.setattr(outage, "outage_log", outage._OutageLog())


@pytest.fixture
def reader_client(reader):
    # Errors become responses, as in production, instead of being raised into the test.
    client = Client(raise_request_exception=False)
    client.force_login(reader)
    return client


def first_pending(study, reader):
    return Presentation.objects.filter(study=study, reader=reader, answer__isnull=True).order_by("position")[
        0
    ]


def test_during_an_outage_the_labelling_requests_answer_503_with_retry_after(reader_client, reader):
    study = make_open_study(reader, images=4)
    presentation = first_pending(study, reader)

    with database_outage():
        state = reader_client.get(f"/study/{study.pk}/state")
        answer = reader_client.post(f"/p/{presentation.pk}/answer", {"label": "real", "viewing_ms": "900"})
        image = reader_client.get(f"/p/{presentation.pk}/image")
        page = reader_client.get(f"/study/{study.pk}/")

    for response in (state, answer):
        assert response.status_code == 503
        assert response["Content-Type"] == "application/json"
        assert response.json()["unavailable"] is True
        assert response["Retry-After"] == "2"
    for response in (image, page):
        assert response.status_code == 503
        assert response["Content-Type"].startswith("text/plain")
        assert b"briefly unavailable" in response.content
        assert response["Retry-After"] == "2"
    # Back: the answer that did not reach the database is taken now, once.
    retried = reader_client.post(f"/p/{presentation.pk}/answer", {"label": "real", "viewing_ms": "900"})
    assert retried.status_code == 200
    assert Answer.objects.filter(presentation=presentation).count() == 1


def test_a_connection_dropped_while_idle_costs_one_503_and_the_next_request_reconnects(reader_client, reader):
    """A database restart between requests: web processes do not check their kept connection
    before each request (DATABASE_CONN_HEALTH_CHECKS off, a round trip saved on every request),
    so the first request on it fails with 503, which the labelling page sends again, and the
    connection is closed when that request ends.

    Through Django's WSGI handler as gunicorn calls it: the test client never closes
    connections at the end of a request, so it could not show the second half."""
    study = make_open_study(reader, images=4)
    cookie = f"{settings.SESSION_COOKIE_NAME}={reader_client.cookies[settings.SESSION_COOKIE_NAME].value}"
    handler = WSGIHandler()

    def get(path):
        environ = RequestFactory().get(path, HTTP_COOKIE=cookie).environ
        response = handler(environ, lambda status, headers: None)
        response.close()  # what the server does when the response is sent: request_finished
        return response

    assert get(f"/study/{study.pk}/state").status_code == 200
    assert connection.connection is not None  # kept between requests (CONN_MAX_AGE)
    admin = psycopg2.connect(**admin_connection_kwargs())
    try:
        with admin.cursor() as cursor:  # what a restart does to it
            cursor.execute("SELECT pg_terminate_backend(%s)", [connection.connection.get_backend_pid()])
        admin.commit()
    finally:
        admin.close()
    first = get(f"/study/{study.pk}/state")
    assert first.status_code == 503 and first["Retry-After"] == "2"
    again = get(f"/study/{study.pk}/state")
    assert again.status_code == 200 and json.loads(again.content)["current"] is not None


def test_an_outage_met_inside_a_view_answers_503_too(client, reader):
    # Logging in reads no session first: the view itself meets the outage (axes, the user).
    with database_outage():
        response = client.post("/accounts/login/", {"username": "reader", "password": "reader-pass"})
    assert response.status_code == 503
    assert response["Retry-After"] == "2"


def test_an_outage_is_logged_once_a_minute_without_tracebacks(reader_client, reader, caplog, monkeypatch):
    study = make_open_study(reader, images=2)
    clock = [1000.0]
    monkeypatch.setattr(outage, "_now", lambda: clock[0])

    with caplog.at_level(logging.INFO), database_outage():
        for _ in range(5):
            assert reader_client.get(f"/study/{study.pk}/state").status_code == 503
        clock[0] += 61
        assert reader_client.get(f"/study/{study.pk}/state").status_code == 503

    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in errors] == ["config.outage", "config.outage"]
    assert all(r.exc_info is None for r in errors)
    assert "OperationalError" in errors[0].getMessage()
    assert "4 more requests answered 503" in errors[1].getMessage()


def test_other_server_errors_are_still_500s(reader_client, reader, monkeypatch):
    study = make_open_study(reader, images=2)

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("studies.views.reader_state", broken)
    assert reader_client.get(f"/study/{study.pk}/state").status_code == 500
