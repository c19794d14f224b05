"""`make demo`: accounts made once and reused; the worker trains the demo model, the study opens;
the web server and worker run and stop."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from generation.models import GenerationJob, GenerativeModel, TrainingJob
from studies.demo import (
    DEMO_MODEL,
    DEMO_STUDY,
    DEMO_TRAINING_SET,
    DemoTraining,
    demo_accounts_ensure,
    demo_generation_resume,
    demo_training_ensure,
)
from studies.models import Study, StudyModel
from tests.studies.study_fixtures import fixture_version, make_real_set


@pytest.mark.django_db
def test_the_demo_accounts_are_made_once_and_reused(tmp_path):
    path = tmp_path / "demo_accounts.json"
    first = demo_accounts_ensure(credentials_path=path)
    again = demo_accounts_ensure(credentials_path=path)
    assert first == again
    assert [a.username for a in first] == ["researcher", "reader1", "reader2"]
    users = get_user_model().objects.in_bulk(field_name="username")
    assert users["researcher"].is_staff and not users["reader1"].is_staff
    for account in first:
        assert users[account.username].check_password(account.password)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.django_db
def test_a_demo_account_whose_password_changed_gets_a_known_one_again(tmp_path):
    path = tmp_path / "demo_accounts.json"
    demo_accounts_ensure(credentials_path=path)
    user = get_user_model().objects.get(username="reader1")
    user.set_password("changed-by-hand")
    user.save()
    accounts = {a.username: a.password for a in demo_accounts_ensure(credentials_path=path)}
    user.refresh_from_db()
    assert user.check_password(accounts["reader1"])
    assert json.loads(path.read_text()) == accounts


@pytest.mark.django_db
def test_the_demo_launches_its_training_once_and_resumes_one_an_earlier_demo_left(settings, tmp_path):
    make_real_set(16, name=DEMO_TRAINING_SET)
    training = DemoTraining(steps=5)
    job = demo_training_ensure(training=training)
    assert (job.name, job.method, job.steps, job.batch_size, job.resolution) == (
        DEMO_MODEL,
        "unconditional",
        5,
        16,
        32,
    )
    assert list(job.image_sets.values_list("name", flat=True)) == [DEMO_TRAINING_SET]
    # The demo was stopped while its worker trained: the next demo queues the job again, to resume.
    TrainingJob.objects.filter(pk=job.pk).update(status="running", step=3)
    again = demo_training_ensure(training=training)
    assert (again.pk, again.status, again.attempt) == (job.pk, "queued", 2)
    assert TrainingJob.objects.count() == 1
    TrainingJob.objects.filter(pk=job.pk).update(status="done")
    GenerativeModel.objects.create(
        name=DEMO_MODEL, path=str(tmp_path), pipeline_class="DDPMPipeline", native_size=32
    )
    assert demo_training_ensure(training=training) is None
    assert TrainingJob.objects.count() == 1


@pytest.mark.django_db
def test_the_demo_queues_again_the_generation_its_study_waited_on_when_it_was_stopped():
    version = fixture_version(DEMO_MODEL)
    job = GenerationJob.objects.create(version=version, count=13, status="running")
    study = Study.objects.create(title=DEMO_STUDY, status="preparing", real_count=12)
    StudyModel.objects.create(study=study, model=version.model, version=version, count=12, job=job)
    other = Study.objects.create(title="Another study", status="preparing", real_count=12)
    elsewhere = GenerationJob.objects.create(version=version, count=5, status="running")
    StudyModel.objects.create(study=other, model=version.model, version=version, count=5, job=elsewhere)
    assert demo_generation_resume() == 1
    job.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (job.status, job.attempt) == ("queued", 2)
    assert (elsewhere.status, elsewhere.attempt) == ("running", 1)
    assert demo_generation_resume() == 1  # still unfinished: a demo started again queues it again


def test_the_demo_refuses_a_training_it_cannot_run_before_starting_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--setup-only", "--training-phantoms", "8"],
        cwd=settings.BASE_DIR,
        env=demo_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "The demo model cannot be trained: the batch of 16 needs at least as many images" in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, opener=None):
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def admin_opener(base: str, username: str, password: str):
    """A browser-like session (cookies, CSRF) logged in to the admin."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    _, page = get(f"{base}/admin/login/", opener)
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    request = urllib.request.Request(
        f"{base}/admin/login/?next=/admin/", data=form.encode(), headers={"Referer": base}
    )
    with opener.open(request, timeout=5) as response:
        assert response.status == 200
    return opener


def query(var, sql: str, *args):
    with sqlite3.connect(var / "db.sqlite3", timeout=20) as db:
        return db.execute(sql, args).fetchall()


def demo_environment(var) -> dict:
    """The demo as a user runs it: embedded SQLite and filesystem broker, no server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(VAR_DIR=str(var), PYTHONUNBUFFERED="1")
    return env


# A training of a few steps: the demo's own (minutes) is the default of `manage.py demo`.
TINY_TRAINING = ["--training-steps", "3", "--training-phantoms", "16"]


def test_the_demo_trains_its_model_then_opens_its_study_while_the_site_answers(tmp_path):
    port = free_port()
    log = open(tmp_path / "demo.log", "w+")
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}", *TINY_TRAINING],
        cwd=settings.BASE_DIR,
        env={**demo_environment(tmp_path), "DEBUG": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        login = (None, "")
        while time.monotonic() < deadline and demo.poll() is None and login[0] != 200:
            try:
                login = get(f"{base}/accounts/login/")
            except OSError:
                time.sleep(0.3)
        assert login[0] == 200 and "Log in" in login[1]
        # The site answers before the study can open: the worker trains and generates meanwhile.
        assert query(tmp_path, "SELECT COUNT(*) FROM studies_presentation") == [(0,)]
        while time.monotonic() < deadline and get(f"{base}/healthz")[0] != 200:
            time.sleep(0.5)
        assert json.loads(get(f"{base}/healthz")[1])["status"] == "ok"
        deadline = time.monotonic() + 600  # a shared 2-core machine can be very slow
        while time.monotonic() < deadline and demo.poll() is None:
            if query(tmp_path, "SELECT status FROM studies_study") == [("open",)]:
                break
            time.sleep(1)
        [(job_id, status, step, steps)] = query(
            tmp_path, "SELECT id, status, step, steps FROM generation_trainingjob"
        )
        assert (status, step, steps) == ("done", 3, 3)
        accounts = json.loads((tmp_path / "demo_accounts.json").read_text())
        admin = admin_opener(base, "researcher", accounts["researcher"])
        status, page = get(f"{base}/admin/generation/trainingjob/{job_id}/change/", admin)
        assert status == 200 and "step 3 of 3" in page
        # Both readers got the open study: 12 phantoms, 12 of the trained model's images, 2 practice.
        assert query(tmp_path, "SELECT COUNT(*) FROM studies_presentation") == [(2 * (24 + 2),)]
        [(model_id, description)] = query(
            tmp_path, "SELECT id, description FROM generation_generativemodel WHERE name = ?", DEMO_MODEL
        )
        assert "trained" in description and "random" not in description
        shown = query(
            tmp_path,
            "SELECT v.model_id, COUNT(*) FROM studies_studyimage s "
            "JOIN generation_generatedimage g ON g.image_id = s.image_id "
            "JOIN generation_modelversion v ON v.id = g.version_id GROUP BY v.model_id",
        )
        assert shown == [(model_id, 13)]  # 12 scored and 1 practice
        # No training phantom is one of the study's phantoms.
        sources = dict(
            query(
                tmp_path,
                "SELECT s.name, COUNT(DISTINCT i.source_sha256) FROM studies_image i "
                "JOIN studies_imageset s ON s.id = i.image_set_id GROUP BY s.name",
            )
        )
        together = query(
            tmp_path, "SELECT COUNT(DISTINCT source_sha256) FROM studies_image WHERE origin = 'real'"
        )
        assert sources[DEMO_TRAINING_SET] == 16 and together == [(16 + 24,)]
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=60)
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, output
    for username, password in accounts.items():
        assert f"{username:<10} password: {password}" in output
    assert "Stopped the web server and the worker." in output
    assert "24 imported" in output and "16 imported" in output and "NOT clinical radiographs" in output
    assert f"admin/generation/trainingjob/{job_id}/change/" in output
    assert "The demo study 'Demo study: real or synthetic?' is open" in output
    assert "noise" not in output and "random weights" not in output
    with pytest.raises(OSError):
        get(f"{base}/accounts/login/")


def test_the_demo_stops_the_worker_when_the_web_server_cannot_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}", *TINY_TRAINING],
            cwd=settings.BASE_DIR,
            env=demo_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "The web stopped by itself" in result.stderr
    assert "Stopped the demo" in result.stderr
