"""Answers that are never lost: one per presentation, idempotent, scoped, refused clearly."""

import random
import threading

import pytest
from django.db import connection

from studies.models import Answer, Presentation, Study, StudyReader
from studies.services import answer_submit
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(reader):
    return make_open_study(reader, images=4)


@pytest.fixture
def other_reader(django_user_model):
    return django_user_model.objects.create_user("other", password="other-pass")


@pytest.fixture
def other_study(other_reader):
    return make_open_study(other_reader, images=2)


def first(study, reader) -> Presentation:
    return Presentation.objects.filter(study=study, reader=reader).order_by("position").first()


URLS = {
    "label page": lambda s, p: ("get", f"/study/{s.pk}/"),
    "state": lambda s, p: ("get", f"/study/{s.pk}/state"),
    "done page": lambda s, p: ("get", f"/study/{s.pk}/done/"),
    "image": lambda s, p: ("get", f"/p/{p.pk}/image"),
    "answer": lambda s, p: ("post", f"/p/{p.pk}/answer"),
}
# Who gets what: the assigned reader reaches everything; everyone else gets a 404
# (anonymous users are sent to log in, except for images, which never redirect).
EXPECTED = {
    "reader": {"label page": 200, "state": 200, "done page": 302, "image": 200, "answer": 200},
    "other_reader": dict.fromkeys(URLS, 404),
    "researcher": dict.fromkeys(URLS, 404),
    "anonymous": {**dict.fromkeys(URLS, 302), "image": 404},
}


@pytest.mark.parametrize("who", sorted(EXPECTED))
@pytest.mark.parametrize("url", sorted(URLS))
def test_every_reader_url_answers_only_its_reader(
    client, who, url, study, reader, other_study, researcher, request
):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    method, path = URLS[url](study, first(study, reader))
    response = getattr(client, method)(
        path, {"label": "real", "viewing_ms": 10} if method == "post" else None
    )
    assert response.status_code == EXPECTED[who][url]
    if who == "anonymous" and response.status_code == 302:
        assert response["Location"].startswith("/accounts/login/")


def test_a_double_submission_records_one_answer_and_the_same_state(client, reader, study):
    client.force_login(reader)
    presentation = first(study, reader)
    one = client.post(f"/p/{presentation.pk}/answer", {"label": "fake", "viewing_ms": 1200})
    two = client.post(f"/p/{presentation.pk}/answer", {"label": "real", "viewing_ms": 1300})
    assert one.status_code == two.status_code == 200
    assert one.json() == two.json()
    answer = Answer.objects.get()
    assert (answer.label, answer.viewing_ms) == ("fake", 1200)


def test_the_state_walks_through_the_readers_sequence_to_the_end(client, reader, study):
    client.force_login(reader)
    state = client.get(f"/study/{study.pk}/state").json()
    seen = []
    while not state["done"]:
        current = state["current"]
        assert current["n"] == len(seen) + 1 and current["total"] == 4
        assert current["image"] == f"/p/{current['id']}/image"
        seen.append(current["id"])
        state = client.post(f"/p/{current['id']}/answer", {"label": "unsure", "viewing_ms": 5}).json()
    assert state == {"current": None, "next": None, "done": True}
    assert seen == [str(p.pk) for p in Presentation.objects.filter(study=study, reader=reader)]
    assert client.get(f"/study/{study.pk}/").status_code == 302
    done = client.get(f"/study/{study.pk}/done/")
    assert "4" in done.content.decode()


@pytest.mark.parametrize(
    "options, data, message",
    [
        ({}, {"label": "maybe"}, "The answer must be real, fake or unsure."),
        ({"allow_unsure": False}, {"label": "unsure"}, "The answer must be real or fake."),
        ({"ask_confidence": True}, {"label": "real"}, "Choose a confidence from 1 to 5 as well."),
        ({"ask_confidence": True}, {"label": "real", "confidence": "9"}, "Choose a confidence from 1 to 5"),
    ],
)
def test_a_bad_answer_is_refused_with_a_reason_and_nothing_is_stored(client, reader, options, data, message):
    study = make_open_study(reader, images=2, **options)
    client.force_login(reader)
    response = client.post(f"/p/{first(study, reader).pk}/answer", data)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Answer.objects.exists()


def test_a_confidence_is_kept_when_asked_for(client, reader):
    study = make_open_study(reader, images=2, ask_confidence=True)
    client.force_login(reader)
    client.post(f"/p/{first(study, reader).pk}/answer", {"label": "real", "confidence": "4", "viewing_ms": 7})
    assert Answer.objects.get().confidence == 4


def test_a_closed_study_says_so(client, reader, study):
    Study.objects.filter(pk=study.pk).update(status="closed")
    client.force_login(reader)
    response = client.post(f"/p/{first(study, reader).pk}/answer", {"label": "real"})
    assert response.status_code == 409 and response.json()["closed"] is True
    assert "This study is closed" in client.get(f"/study/{study.pk}/").content.decode()
    assert not Answer.objects.exists()


def test_each_reader_gets_a_shuffle_of_their_own_that_its_seed_rebuilds(reader, other_reader):
    study = make_open_study(reader, images=10, readers=[other_reader])
    orders = {}
    for person in (reader, other_reader):
        place = StudyReader.objects.get(study=study, reader=person)
        shown = list(
            Presentation.objects.filter(study=study, reader=person).values_list("image_id", flat=True)
        )
        pool = sorted(shown)
        random.Random(place.seed).shuffle(pool)
        assert shown == pool  # the recorded seed rebuilds the order
        orders[person.pk] = shown
    assert sorted(orders[reader.pk]) == sorted(orders[other_reader.pk])
    assert StudyReader.objects.values("seed").distinct().count() == 2


def test_presentation_ids_say_nothing_about_the_image(reader, other_reader):
    study = make_open_study(reader, images=4, readers=[other_reader])
    by_image = {}
    for p in Presentation.objects.filter(study=study):
        by_image.setdefault(p.image_id, set()).add(p.pk)
    assert all(len(ids) == 2 for ids in by_image.values())  # the same image, unrelated ids


def test_my_studies_lists_the_study_with_progress_and_a_resume_link(client, reader, study):
    client.force_login(reader)
    answer_submit(presentation=first(study, reader), label="real", viewing_ms=1)
    page = client.get("/").content.decode()
    assert "Chest X-ray realism" in page and "1 of 4" in page
    assert f'href="/study/{study.pk}/"' in page and "Resume" in page


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_threads_submitting_the_same_answer_on_postgresql_end_with_one_row(reader):
    study = make_open_study(reader, images=2)
    presentation = first(study, reader)
    barrier = threading.Barrier(2)
    errors = []

    def submit(label):
        try:
            barrier.wait()
            answer_submit(
                presentation=Presentation.objects.get(pk=presentation.pk), label=label, viewing_ms=3
            )
        except Exception as exc:  # collected and raised below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(label,)) for label in ("real", "fake")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Answer.objects.filter(presentation=presentation).count() == 1


@pytest.mark.parametrize("viewing_ms", ["NaN", "1.5", "inf", "-Infinity", "", "-5", "1e3", "١٢"])
def test_a_viewing_time_that_is_not_a_whole_number_is_refused_by_name(client, reader, study, viewing_ms):
    client.force_login(reader)
    path = f"/p/{first(study, reader).pk}/answer"
    response = client.post(path, {"label": "real", "viewing_ms": viewing_ms})
    assert response.status_code == 400
    assert "viewing time must be a whole number" in response.json()["error"]
    assert not Answer.objects.filter(presentation__study=study).exists()


def test_a_viewing_time_past_a_day_is_capped(client, reader, study):
    client.force_login(reader)
    client.post(f"/p/{first(study, reader).pk}/answer", {"label": "real", "viewing_ms": "999999999999"})
    assert Answer.objects.get(presentation__study=study).viewing_ms == 24 * 3600 * 1000
