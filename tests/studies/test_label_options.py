"""The study's options on the reader's side: practice with feedback, going back, the time limit."""

import pytest

from studies.models import Answer, Presentation
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db


def sequence(study, reader):
    return list(Presentation.objects.filter(study=study, reader=reader).order_by("position"))


def answer(client, presentation, label="real"):
    return client.post(f"/p/{presentation.pk}/answer", {"label": label, "viewing_ms": 1000})


def test_practice_images_come_first_and_show_the_truth_but_study_images_never_do(client, reader):
    study = make_open_study(reader, images=4, practice=2)
    client.force_login(reader)
    items = sequence(study, reader)
    state = client.get(f"/study/{study.pk}/state").json()
    assert state["current"]["practice"] and state["current"]["n"] == 1 and state["current"]["total"] == 2

    for presentation in items[:2]:
        body = answer(client, presentation).json()
        truth = "real" if presentation.image.origin == "real" else "fake"
        assert body["feedback"] == {"truth": truth}
    assert body["current"] == {**body["current"], "practice": False, "n": 1, "total": 4}
    for presentation in items[2:]:
        body = answer(client, presentation).json()
        assert "feedback" not in body
        assert "truth" not in str(body) and "synthetic" not in str(body)
    assert body["done"]


def test_without_going_back_an_earlier_answer_cannot_be_reached_or_changed(client, reader):
    study = make_open_study(reader, images=3)
    client.force_login(reader)
    first, second, _ = sequence(study, reader)
    answer(client, first, "real")
    assert client.get(f"/study/{study.pk}/state", {"at": first.pk}).status_code == 404
    answer(client, first, "fake")
    assert Answer.objects.get(presentation=first).label == "real"
    assert "previous" not in client.get(f"/study/{study.pk}/state").json()["current"]


def test_going_back_shows_the_earlier_answer_and_a_change_replaces_it(client, reader):
    study = make_open_study(reader, images=3, allow_back=True)
    client.force_login(reader)
    first, second, third = sequence(study, reader)
    answer(client, first, "real")
    current = client.get(f"/study/{study.pk}/state").json()["current"]
    assert current["id"] == str(second.pk) and current["previous"] == str(first.pk)

    back = client.get(f"/study/{study.pk}/state", {"at": first.pk}).json()
    assert back["current"]["id"] == str(first.pk)
    assert back["current"]["answer"] == {"label": "real", "confidence": None, "reasons": [], "region": None}
    assert back["next"]["id"] == str(second.pk)  # where the reader goes on from

    after = answer(client, first, "fake").json()
    assert Answer.objects.get(presentation=first).label == "fake"
    assert Answer.objects.get(presentation=first).viewing_ms == 2000  # both looks count
    assert after["current"]["id"] == str(second.pk)
    assert Answer.objects.filter(presentation__study=study).count() == 1
    # Never to an image not yet answered, nor to another reader's.
    assert client.get(f"/study/{study.pk}/state", {"at": third.pk}).status_code == 404
    assert client.get(f"/study/{study.pk}/state", {"at": "not-a-uuid"}).status_code == 404


def test_going_back_never_reaches_practice_images(client, reader):
    study = make_open_study(reader, images=2, practice=1, allow_back=True)
    client.force_login(reader)
    practice, first, _ = sequence(study, reader)
    answer(client, practice)
    assert client.get(f"/study/{study.pk}/state").json()["current"]["previous"] is None
    assert client.get(f"/study/{study.pk}/state", {"at": practice.pk}).status_code == 404


def test_the_time_limit_reaches_the_page(client, reader):
    study = make_open_study(reader, images=2, time_limit_seconds=20)
    client.force_login(reader)
    page = client.get(f"/study/{study.pk}/")
    assert b'data-time-limit-ms="20000"' in page.content
    assert b"at most 20 seconds" in page.content
