"""Fixtures shared by the whole suite: the three standing actors and a real worker."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app
from config.celery import worker_command
from config.storage import FILESYSTEM, storage_from_url

from . import seaweedfs


def pytest_report_header(config):
    if settings.TEST_SERVICES:
        return "services: PostgreSQL and Redis (tests marked 'services' run)"
    return (
        "services: none answered, so SQLite and the filesystem broker; "
        "tests marked 'services' are SKIPPED (CI runs them)"
    )


CHROMIUM = "/usr/bin/chromium"
# The fixtures `browser` and `tabs` of the browser tests.
pytest_plugins = ["tests.browser"]


def pytest_collection_modifyitems(config, items):
    require = os.environ.get("REQUIRE_SERVICES") == "1"
    no_services = pytest.mark.skip(reason="needs PostgreSQL and Redis, which did not answer")
    no_browser = pytest.mark.skip(reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    for item in items:
        if "services" in item.keywords and not settings.TEST_SERVICES:
            item.add_marker(no_services)
        if "browser" in item.keywords and not os.path.exists(CHROMIUM):
            if require:
                raise pytest.UsageError(f"REQUIRE_SERVICES=1 but there is no Chromium at {CHROMIUM}")
            item.add_marker(no_browser)


@pytest.fixture(scope="session")
def object_store():
    """The SeaweedFS S3 server (tests/seaweedfs.py): the one .ci/run started, or one started here.

    Started like a service, not for this session alone: it keeps running afterwards, in a
    fixed folder, so that test sessions running side by side share one and none of them
    pulls it from under another.
    """
    seaweedfs.ensure(seaweedfs.DATA_FOLDER)
    return seaweedfs.s3_url()


def use_object_storage(settings, prefix: str) -> str:
    """Keep this test's files in the test bucket under `prefix`; the STORAGE_URL for its workers."""
    settings.STORAGE_URL = seaweedfs.s3_url(prefix=prefix)
    settings.STORAGES = {**settings.STORAGES, "default": storage_from_url(settings.STORAGE_URL)}
    return settings.STORAGE_URL


def use_filesystem(settings, folder) -> None:
    settings.MEDIA_ROOT = folder
    settings.STORAGE_URL = ""
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": FILESYSTEM}}


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path, request):
    """Each test keeps its files apart: in the S3 server's test bucket under a prefix of its
    own (TEST_STORAGE=s3, the default), or in a folder of its own (TEST_STORAGE=filesystem).
    Either way MEDIA_ROOT is a fresh folder, which holds the files under the filesystem."""
    use_filesystem(settings, tmp_path / "media")
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"  # this host's copies of stored models
    if settings.TEST_STORAGE == "s3" and "filesystem_storage" not in request.fixturenames:
        request.getfixturevalue("object_store")
        use_object_storage(settings, f"t/{uuid.uuid4().hex}")
    return settings.MEDIA_ROOT


@pytest.fixture
def small_disk(filesystem_storage):
    """MEDIA_ROOT on a real filesystem of 8 MiB that fills up: a tmpfs. Mounting one needs root,
    as CI has; without it the test is skipped, but in CI (REQUIRE_SERVICES=1) it fails."""
    filesystem_storage.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(filesystem_storage)]
    if subprocess.run(mount, capture_output=True).returncode:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            raise RuntimeError("REQUIRE_SERVICES=1 but a small tmpfs cannot be mounted (root is needed)")
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        yield filesystem_storage
    finally:
        subprocess.run(["umount", "-l", str(filesystem_storage)], check=True)


def stored_names(prefix: str = "") -> set[str]:
    """Every file in this test's storage (folder or bucket prefix) under `prefix`, by name."""
    from django.core.files.storage import default_storage

    def walk(folder):
        try:
            folders, files = default_storage.listdir(folder)
        except FileNotFoundError:
            return
        for name in files:
            yield f"{folder}/{name}" if folder else name
        for sub in folders:
            yield from walk(f"{folder}/{sub}" if folder else sub)

    return set(walk(prefix.strip("/")))


@pytest.fixture
def filesystem_storage(settings, media_root):
    """For tests of the folder storage itself (its files' times, atomic renames): always a folder."""
    return media_root


@pytest.fixture
def weights(settings, tmp_path):
    """Random weights for the machine measures' extractors, in the files the settings name."""
    import torch

    from generation.features import FIDInception, XRVDenseNet

    torch.manual_seed(0)
    torch.save(XRVDenseNet().state_dict(), tmp_path / "xrv.pt")
    torch.save(FIDInception().state_dict(), tmp_path / "inception.pth")
    settings.METRICS_XRV_WEIGHTS = str(tmp_path / "xrv.pt")
    settings.METRICS_INCEPTION_WEIGHTS = str(tmp_path / "inception.pth")
    return tmp_path


@pytest.fixture
def researcher(django_user_model):
    return django_user_model.objects.create_user(
        "researcher", password="researcher-pass", is_staff=True, is_superuser=True
    )


@pytest.fixture
def reader(django_user_model):
    return django_user_model.objects.create_user("reader", password="reader-pass")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("outsider", password="outsider-pass")


def worker_environment() -> dict[str, str]:
    """The environment a worker process needs to share this test's database."""
    db = connection.settings_dict
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings", PYTHONUNBUFFERED="1")
    if db["ENGINE"].endswith("postgresql"):
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["STORAGE_URL"] = settings.STORAGE_URL
    env["MODEL_CACHE_DIR"] = str(settings.MODEL_CACHE_DIR)
    env["METRICS_XRV_WEIGHTS"] = str(settings.METRICS_XRV_WEIGHTS)
    env["METRICS_INCEPTION_WEIGHTS"] = str(settings.METRICS_INCEPTION_WEIGHTS)
    return env


def wait_until(predicate, *, timeout: float, what: str):
    """Poll the database (or anything) until `predicate` returns something true; that result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def wait_for_worker(hostname: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited early with code {process.returncode}")
        if celery_app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise RuntimeError(f"the worker {hostname} did not answer within {timeout} s")


# Beat every second and a short silence period: a worker started with these (and `beat`)
# sends a job's lost chunks again within seconds, not minutes.
FAST_SWEEP = {"CELERY_BEAT_SECONDS": "1", "GENERATION_SILENCE_SECONDS": "4"}


class Workers:
    """Starts real `celery -A config worker` processes and kills them at the end of the test."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen, object]] = []

    def start(self, *, beat: bool = False, **env) -> tuple[str, subprocess.Popen]:
        """A worker with these extra environment variables; with `beat`, it runs the schedule too."""
        hostname = f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        log = open(self.log_dir / f"{hostname}.log", "w+")
        process = subprocess.Popen(
            # Mingle asks the other workers for their revoked tasks: a second's wait for nothing here.
            [*worker_command(hostname=hostname, beat=beat), "--without-mingle"],
            cwd=settings.BASE_DIR,
            env={**worker_environment(), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a test can kill it with its children
        )
        self.started.append((process, log))
        wait_for_worker(hostname, process)
        return hostname, process

    def stop_all(self) -> None:
        """Kill each worker with its pool and beat: the test is over, so a warm shutdown (seconds
        each, longer with a task in hand) would only finish work that nobody looks at."""
        for process, log in self.started:
            with contextlib.suppress(ProcessLookupError):  # a test may have killed it already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.seek(0)
            sys.stdout.write(f"\n--- worker log ---\n{log.read()[-4000:]}\n")
            log.close()


@pytest.fixture
def celery_workers(transactional_db, tmp_path):
    """Real worker processes. The test's rows must be committed for a worker to see
    them, hence the transactional database; leftover messages are purged first."""
    celery_app.control.purge()
    workers = Workers(tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()


# RabbitMQ for the tests that run on both brokers; TEST_RABBITMQ_URL names a vhost of one's own.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def use_broker(url: str | None) -> None:
    """Point this process's Celery app (sending, purging, pinging) at another broker; None: back
    to its own. (Celery prefers the environment's CELERY_BROKER_URL to `broker_url`, not to these.)"""
    celery_app.conf.broker_read_url = celery_app.conf.broker_write_url = url
    # kombu keeps its pools per URL: drop this app's references, close nothing.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    del celery_app.control.mailbox.producer_pool


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, settings):
    """Each broker in turn, for this process and the workers it starts (ask for it before
    `celery_workers`). RabbitMQ is skipped where nothing answers on its port, but in CI
    (REQUIRE_SERVICES=1), where a missing broker fails the run."""
    if request.param == "rabbitmq":
        try:
            socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        except OSError as exc:
            if os.environ.get("REQUIRE_SERVICES") == "1":
                missing = "REQUIRE_SERVICES=1 but RabbitMQ does not answer on 127.0.0.1:5672"
                raise RuntimeError(missing) from exc
            pytest.skip("needs RabbitMQ on 127.0.0.1:5672")
        settings.CELERY_BROKER_URL = RABBITMQ_URL  # what worker_environment() passes on
        use_broker(RABBITMQ_URL)
        try:
            yield RABBITMQ_URL
        finally:
            use_broker(None)
    else:
        yield settings.CELERY_BROKER_URL


@pytest.fixture
def celery_worker_process(celery_workers):
    """One real worker consuming both queues; its hostname."""
    hostname, _ = celery_workers.start()
    return hostname
