"""Settings come from the environment, with safe defaults and clear errors."""

import os
import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, local_secret_key

PRODUCTION_ENV = {
    "DJANGO_ENV": "production",
    "SECRET_KEY": "k3!q9-production-test-key-with-enough-length-and-variety-0123456789",
    "ALLOWED_HOSTS": "studies.example.org",
    "DATABASE_URL": "postgres://app@db.example.org:5432/readerstudy",
    "CELERY_BROKER_URL": "redis://broker.example.org:6379/0",
}


def manage(*args, env):
    dropped = {"DEBUG", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_mode_passes_the_deploy_checks_with_no_warning(tmp_path):
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION_ENV, "VAR_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_mode_refuses_to_start_without_a_secret_key(tmp_path):
    env = {**PRODUCTION_ENV, "SECRET_KEY": "", "VAR_DIR": str(tmp_path)}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DJANGO_ENV=production" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_production_mode_refuses_debug(tmp_path):
    result = manage("check", env={**PRODUCTION_ENV, "DEBUG": "1", "VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DEBUG must be off when DJANGO_ENV=production" in result.stderr


def test_development_defaults_are_safe_and_need_no_server(tmp_path):
    code = (
        "from django.conf import settings as s;"
        "print(s.DEBUG, s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.MEDIA_ROOT)"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env={**clean, "VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    debug, engine, broker, media = result.stdout.splitlines()[-1].split()
    assert debug == "False"
    assert engine == "django.db.backends.sqlite3"
    assert broker == "filesystem://"
    assert media == str(tmp_path / "media")


def test_a_bad_boolean_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        env_bool("DEBUG")


def test_a_bad_number_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("CELERY_TASK_TIME_LIMIT", "ten")
    with pytest.raises(ImproperlyConfigured, match="CELERY_TASK_TIME_LIMIT='ten' is not a whole number"):
        env_int("CELERY_TASK_TIME_LIMIT", 1)


def test_the_local_secret_key_is_made_once_and_kept(tmp_path):
    path = tmp_path / "var" / "secret_key"
    keys = []
    threads = [threading.Thread(target=lambda: keys.append(local_secret_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert len(keys[0]) >= 50
    assert local_secret_key(path) == keys[0]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert list(path.parent.iterdir()) == [path]


def test_media_is_never_served_under_a_public_url(client, researcher):
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    (settings.MEDIA_ROOT / "image.png").write_bytes(b"not for readers")
    client.force_login(researcher)
    for url in ["/media/image.png", "/image.png", "/static/image.png"]:
        assert client.get(url).status_code == 404
