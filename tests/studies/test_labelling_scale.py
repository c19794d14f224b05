"""The labelling requests at scale: a fixed, small number of queries each, and sessions shared in a cache.

Speed itself is measured by benchmarks/labelling.py, never here.
"""

import pytest
from django.conf import settings as django_settings
from django.test import Client

from studies.models import Answer, Presentation
from studies.selectors import reader_state
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db


def pending(study, reader):
    return Presentation.objects.filter(study=study, reader=reader, answer__isnull=True).order_by("position")


@pytest.fixture
def redis_sessions(settings):
    """Sessions as production runs them with CACHE_URL: cached_db on the real Redis."""
    if not django_settings.TEST_SERVICES:
        pytest.skip("needs Redis")
    location = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + "/14"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location}
    }
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    settings.CACHE_URL = location  # what makes config/auth.py keep each request's user there too
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


# Database sessions (no CACHE_URL): one query for the session, one for the user, on every request.
# Answering inside the test's transaction adds a savepoint and its release around the insert.
@pytest.mark.parametrize("images", [6, 40])
def test_each_labelling_request_costs_a_few_queries_whatever_the_sequence_length(
    client, reader, django_assert_num_queries, images
):
    study = make_open_study(reader, images=images)
    client.force_login(reader)
    with django_assert_num_queries(4):  # session, user, study, the reader's state
        assert client.get(f"/study/{study.pk}/").status_code == 200
    with django_assert_num_queries(4):
        state = client.get(f"/study/{study.pk}/state").json()
    with django_assert_num_queries(3):  # session, user, the presentation with its file
        assert client.get(state["current"]["image"]).status_code == 200
    assert client.post(f"/study/{study.pk}/session").json()["number"] == 1  # as the page does first
    # session, user, presentation, the insert (3), the reading session's count, the state
    with django_assert_num_queries(8):
        response = client.post(f"/p/{state['current']['id']}/answer", {"label": "real", "viewing_ms": "900"})
    assert response.status_code == 200
    assert response.json()["current"]["id"] == state["next"]["id"]


# As gunicorn runs it, outside any transaction: the insert is its own statement (no BEGIN and
# COMMIT round trips), and a second one that loses to the constraint leaves the connection usable.
@pytest.mark.django_db(transaction=True)
def test_an_answer_outside_a_transaction_is_one_insert_and_a_repeat_changes_nothing(
    client, reader, django_assert_num_queries
):
    study = make_open_study(reader, images=6)
    client.force_login(reader)
    state = client.get(f"/study/{study.pk}/state").json()
    client.post(f"/study/{study.pk}/session")
    url = f"/p/{state['current']['id']}/answer"
    # session, user, presentation, the insert, the reading session's count, the state
    with django_assert_num_queries(6) as run:
        first = client.post(url, {"label": "real", "viewing_ms": "900"})
    assert any(query["sql"].startswith("INSERT") for query in run.captured_queries)
    assert not any("SAVEPOINT" in query["sql"] for query in run.captured_queries)
    again = client.post(url, {"label": "real", "viewing_ms": "900"})  # the insert loses: a retry
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert Answer.objects.filter(presentation_id=state["current"]["id"]).count() == 1


def test_going_back_costs_no_query_per_image(client, reader, django_assert_num_queries):
    study = make_open_study(reader, images=6, allow_back=True)
    client.force_login(reader)
    for _ in range(3):
        first = pending(study, reader).first()
        client.post(f"/p/{first.pk}/answer", {"label": "fake", "viewing_ms": "900"})
    with django_assert_num_queries(4):
        state = client.get(f"/study/{study.pk}/state").json()
    assert state["current"]["previous"] is not None
    with django_assert_num_queries(5):  # and the answered presentation stepped back to
        back = client.get(f"/study/{study.pk}/state", {"at": state["current"]["previous"]}).json()
    assert back["current"]["answer"] == {"label": "fake", "confidence": None, "reasons": [], "region": None}
    assert back["next"]["id"] == state["current"]["id"]


def test_the_state_counts_answers_given_out_of_order_and_practice_apart(reader):
    study = make_open_study(reader, images=6, practice=2)
    sequence = list(pending(study, reader))
    # The second and the last answered first (another tab, a prefetched image answered).
    for presentation in (sequence[1], sequence[-1]):
        Answer.objects.create(presentation=presentation, label="real", viewing_ms=1)

    state = reader_state(user=reader, study=study)

    assert (state.current, state.next) == (sequence[0], sequence[2])
    assert (state.total, state.practice_total) == (8, 2)
    assert (state.answered, state.practice_answered) == (2, 1)  # the practice comes first
    assert (state.study_total, state.study_answered) == (6, 1)


def test_a_finished_reader_is_done_with_every_count(reader):
    study = make_open_study(reader, images=3, practice=2)
    for presentation in pending(study, reader):
        Answer.objects.create(presentation=presentation, label="fake", viewing_ms=1)

    state = reader_state(user=reader, study=study)

    assert state.done and state.next is None
    assert (state.answered, state.total, state.practice_answered, state.practice_total) == (5, 5, 2, 2)


@pytest.mark.services
def test_with_a_shared_cache_sessions_and_users_cost_no_query(
    redis_sessions, client, reader, django_assert_num_queries
):
    study = make_open_study(reader, images=4)
    client.force_login(reader)
    client.get(f"/study/{study.pk}/state")  # the session and the user are read into the cache once
    with django_assert_num_queries(2):  # study, state
        client.get(f"/study/{study.pk}/state")
    state = client.get(f"/study/{study.pk}/state").json()
    with django_assert_num_queries(1):  # the presentation with its file
        assert client.get(state["current"]["image"]).status_code == 200


@pytest.mark.services
def test_with_a_shared_cache_a_logout_ends_the_session_everywhere(redis_sessions, client, reader):
    study = make_open_study(reader, images=4)
    client.force_login(reader)
    assert client.get(f"/study/{study.pk}/state").status_code == 200
    stolen = Client()  # the same cookie on another browser, or through another web server
    stolen.cookies = client.cookies

    client.post("/accounts/logout/")

    response = stolen.get(f"/study/{study.pk}/state")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.services
def test_with_a_shared_cache_a_deactivated_reader_loses_access_at_once(redis_sessions, client, reader):
    study = make_open_study(reader, images=4)
    client.force_login(reader)
    assert client.get(f"/study/{study.pk}/state").status_code == 200

    reader.is_active = False
    reader.save(update_fields=["is_active"])

    response = client.get(f"/study/{study.pk}/state")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    presentation = Presentation.objects.filter(study=study).first()
    assert client.get(f"/p/{presentation.pk}/image").status_code == 404


@pytest.mark.services
def test_with_a_shared_cache_a_new_password_ends_the_other_sessions_at_once(redis_sessions, client, reader):
    study = make_open_study(reader, images=4)
    client.force_login(reader)
    assert client.get(f"/study/{study.pk}/state").status_code == 200  # the user is cached now

    reader.set_password("a-new-password-for-this-reader")
    reader.save()  # as the admin's password form and `changepassword` do

    response = client.get(f"/study/{study.pk}/state")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.services
def test_a_user_cached_again_before_its_save_commits_is_dropped_at_the_commit(
    redis_sessions, reader, django_capture_on_commit_callbacks
):
    from django.core.cache import cache

    from config.auth import user_cache_key

    with django_capture_on_commit_callbacks(execute=True):
        reader.is_active = False
        reader.save()  # inside a transaction, as the admin saves
        # Meanwhile another request, which still sees the committed row, caches it.
        cache.set(user_cache_key(reader.pk), reader.__class__(pk=reader.pk, username=reader.username))
    assert cache.get(user_cache_key(reader.pk)) is None
