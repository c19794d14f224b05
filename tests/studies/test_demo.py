"""`make demo`: accounts made once and reused; the web server and worker run and stop."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from studies.demo import demo_accounts_ensure


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def demo_images(var) -> int:
    with sqlite3.connect(var / "db.sqlite3", timeout=20) as db:
        return db.execute("SELECT COUNT(*) FROM generation_generatedimage").fetchone()[0]


def test_the_demo_serves_the_login_page_with_a_worker_and_stops_on_ctrl_c(tmp_path):
    """The demo as a user runs it: embedded SQLite and filesystem broker, no server."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(VAR_DIR=str(tmp_path), DEBUG="1", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "demo.log", "w+")
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        health = (None, "")
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                health = get(f"{base}/healthz")
                if health[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert health[0] == 200, f"healthz: {health}"
        assert json.loads(health[1])["status"] == "ok"
        status, login = get(f"{base}/accounts/login/")
        assert status == 200 and "Log in" in login
        assert get(f"{base}/admin/login/")[0] == 200
        assert (tmp_path / "db.sqlite3").exists()
        assert (tmp_path / "broker").is_dir()
        assert demo_images(tmp_path) == 24
        with sqlite3.connect(tmp_path / "db.sqlite3", timeout=20) as db:
            seeded = db.execute("SELECT COUNT(*) FROM studies_presentation").fetchone()[0]
        assert seeded == 2 * (24 + 2)  # the demo study with 2 practice images, for both readers
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=60)
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, output
    accounts = json.loads((tmp_path / "demo_accounts.json").read_text())
    for username, password in accounts.items():
        assert f"{username:<10} password: {password}" in output
    assert "Stopped the web server and the worker." in output
    assert "24 imported" in output and "NOT clinical radiographs" in output
    assert "Its weights are random, so its images are noise." in output
    with pytest.raises(OSError):
        get(f"{base}/accounts/login/")


def test_the_demo_stops_the_worker_when_the_web_server_cannot_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
        }
        env.update(VAR_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
        result = subprocess.run(
            [sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}"],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "The web stopped by itself" in result.stderr
    assert "Stopped the demo" in result.stderr
