"""Chunks that the broker loses are sent again by beat's sweep; a healthy long batch is not."""

import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from config.celery import app as celery_app
from config.storage import object_storage_options
from generation.jobs import MAX_RESENDS, chunk_run, job_launch, job_retry, jobs_sweep, waiting_tasks
from generation.models import GeneratedImage, GenerationJob
from generation.services import model_register
from generation.tasks import generate_chunk
from tests.conftest import FAST_SWEEP, use_broker, wait_until
from tests.generation.models import built


def silence(job, settings):
    """As if no worker had touched the job for longer than the silence period."""
    then = timezone.now() - timedelta(seconds=settings.GENERATION_SILENCE_SECONDS + 1)
    GenerationJob.objects.filter(pk=job.pk).update(heartbeat=then)


def ended(job) -> bool:
    return GenerationJob.objects.get(pk=job.pk).status in ("done", "failed")


def seeds_of(version):
    return sorted(GeneratedImage.objects.filter(version=version).values_list("seed", flat=True))


@pytest.mark.django_db
def test_the_sweep_sends_a_silent_jobs_missing_chunks_again_and_the_lost_ones_stand_down(
    settings, empty_queues
):
    model = model_register(name="lost", path=str(built("ddpm")), steps=2, batch_size=1)
    # In a test's transaction its chunks are never sent: as if the broker had lost them.
    job = job_launch(version=model.current_version, count=2)
    chunk_run(job_id=job.pk, seeds=[0])
    assert jobs_sweep() == 0  # touched just now
    silence(job, settings)
    assert jobs_sweep() == 1
    job.refresh_from_db()
    assert (job.status, job.attempt, job.resends) == ("running", 2, 1)
    assert jobs_sweep() == 0  # sending is a sign of life: the clock starts again
    chunk_run(job_id=job.pk, seeds=[1], attempt=1)  # a lost chunk that turns up after all
    assert seeds_of(job.version) == [0]
    chunk_run(job_id=job.pk, seeds=[1], attempt=2)
    job.refresh_from_db()
    assert (job.status, job.resends) == ("done", 0)
    assert seeds_of(job.version) == [0, 1]


@pytest.mark.django_db
def test_the_sweep_leaves_a_silent_job_alone_while_tasks_wait_in_the_gpu_queue(settings, empty_queues):
    model = model_register(name="behind", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=1)
    silence(job, settings)
    # A real message in the queue: another job's chunk, which this job waits behind.
    generate_chunk.apply_async((job.pk + 1000, [0], 1))
    assert waiting_tasks() == 1
    assert jobs_sweep() == 0
    assert GenerationJob.objects.get(pk=job.pk).attempt == 1
    celery_app.control.purge()
    assert waiting_tasks() == 0
    assert jobs_sweep() == 1


@pytest.mark.django_db
def test_a_job_that_keeps_losing_its_chunks_fails_with_the_reason_and_can_be_retried(settings, empty_queues):
    model = model_register(name="lossy", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=2)
    for _ in range(MAX_RESENDS):
        silence(job, settings)
        assert jobs_sweep() == 1
    silence(job, settings)
    assert jobs_sweep() == 1
    job.refresh_from_db()
    assert job.status == "failed"
    assert f"sent again {MAX_RESENDS} times" in job.error and "2 image(s) are missing" in job.error
    assert "Retry" in job.error


@pytest.mark.services
@pytest.mark.parametrize("still", ["running", "queued"])
def test_a_job_whose_queued_chunks_vanish_from_the_broker_ends_with_exactly_its_images(
    broker, celery_workers, still
):
    """The chunks of a job vanish from the broker for real (the queue purged, as a Redis
    restart without AOF or a lost RabbitMQ node would): beat's sweep sends them again."""
    model = model_register(name="vanish", path=str(built("ddpm")), steps=30, batch_size=1)
    count = 5
    if still == "queued":  # no worker has seen the job before its chunks vanish
        job = job_launch(version=model.current_version, count=count)
        wait_until(waiting_tasks, timeout=30, what="the chunks in the queue")
        celery_app.control.purge()
        assert GenerationJob.objects.get(pk=job.pk).status == "queued"
        celery_workers.start(beat=True, **FAST_SWEEP)
    else:
        celery_workers.start(beat=True, **FAST_SWEEP)
        job = job_launch(version=model.current_version, count=count)
        wait_until(lambda: GeneratedImage.objects.exists(), timeout=120, what="a first image")
        celery_app.control.purge()  # what the worker holds is not in the queue: it finishes it
        assert GenerationJob.objects.get(pk=job.pk).status == "running"
    wait_until(lambda: ended(job), timeout=180, what="the job's end")
    assert GenerationJob.objects.get(pk=job.pk).status == "done"
    assert seeds_of(model.current_version) == list(range(count))
    assert GenerationJob.objects.get(pk=job.pk).attempt >= 2


class OwnRedis:
    """A Redis server of this test's own, that keeps nothing on disk (as Redis is often
    deployed), so that restarting it loses its queues for real."""

    def __init__(self, folder: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.answers, timeout=10, what="Redis's start")

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path, settings):
    """Ask for it before `celery_workers`: the workers stop before the server does."""
    server = OwnRedis(tmp_path)
    settings.CELERY_BROKER_URL = server.url
    use_broker(server.url)
    try:
        yield server
    finally:
        use_broker(None)
        server.stop()


@pytest.mark.services
def test_a_redis_restart_that_loses_the_queue_is_survived(own_redis, celery_workers):
    """The fault as measured: Redis without an append-only file restarted mid-job."""
    celery_workers.start(beat=True, **FAST_SWEEP)
    model = model_register(name="restart", path=str(built("ddpm")), steps=30, batch_size=1)
    count = 5
    job = job_launch(version=model.current_version, count=count)
    wait_until(lambda: GeneratedImage.objects.exists(), timeout=120, what="a first image")
    own_redis.stop()
    own_redis.start()
    wait_until(lambda: ended(job), timeout=180, what="the job's end")
    job.refresh_from_db()
    assert (job.status, job.resends) == ("done", 0)
    assert job.attempt >= 2  # the sweep sent the lost chunks again
    assert seeds_of(model.current_version) == list(range(count))


@pytest.mark.services
def test_a_healthy_batch_longer_than_the_silence_period_is_not_sent_again(celery_workers):
    """A batch of many steps reports between its steps, so the sweep never takes it for lost.
    Two workers: the idle one runs the sweep (as a `default` worker would) while the other works."""
    celery_workers.start(beat=True, **FAST_SWEEP)
    celery_workers.start(**FAST_SWEEP)
    model = model_register(name="long", path=str(built("ddpm")), steps=500, batch_size=4)
    job = job_launch(version=model.current_version, count=4)
    wait_until(lambda: ended(job), timeout=240, what="the job's end")
    job.refresh_from_db()
    assert job.status == "done", job.error
    assert (job.finished - job.started).total_seconds() > 2 * int(FAST_SWEEP["GENERATION_SILENCE_SECONDS"])
    assert (job.attempt, job.resends, job.deliveries) == (1, 0, {"0": 1})
    assert seeds_of(model.current_version) == [0, 1, 2, 3]


# --- A full disk while a batch is written ------------------------------------------------


def files_under(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in folder.rglob("*") if path.is_file()}


@pytest.mark.django_db
def test_a_disk_that_fills_during_a_batch_keeps_no_file_of_it_and_fails_the_job_plainly(small_disk):
    model = model_register(name="full", path=str(built("ddpm")), steps=2, batch_size=4)
    first = job_launch(version=model.current_version, count=1)
    chunk_run(job_id=first.pk, seeds=[0])
    ((kept, size),) = files_under(small_disk / "images").items()  # the model is stored beside it
    # Room for one and a half images: the second image of the next batch finds the disk full.
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - size * 3 // 2))

    job = job_launch(version=model.current_version, count=4)
    chunk_run(job_id=job.pk, seeds=[1, 2, 3, 4])
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == (
        "Could not store the images of seeds 1..4: the media storage is full. No file of this batch "
        "was kept; free space (or fix the storage), then Retry the job to make its missing images."
    )
    assert seeds_of(model.current_version) == [0]
    # The first image, written whole, was deleted; the one cut short by the full disk was
    # never more than a temporary file (config/storage.py).
    assert set(files_under(small_disk / "images")) == {kept} and filler.exists()

    filler.unlink()
    assert job_retry(job=job)
    job.refresh_from_db()
    chunk_run(job_id=job.pk, seeds=[1, 2, 3, 4], attempt=job.attempt)
    job.refresh_from_db()
    assert job.status == "done"
    assert seeds_of(model.current_version) == [0, 1, 2, 3, 4]


# --- A storage out of reach while a batch is written ------------------------------------


def unreachable_storage() -> dict:
    """An S3 storage at an address where nothing listens, as a link that is down: refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = object_storage_options(
        {
            "bucket_name": "away",
            "access_key": "k",
            "secret_key": "s",
            "endpoint_url": f"http://127.0.0.1:{port}",
        }
    )
    from botocore.config import Config

    # No retries of boto's own: the chunk meets the outage at once (a deployment keeps boto's).
    entry["OPTIONS"]["client_config"] = Config(retries={"max_attempts": 1}, connect_timeout=1)
    return entry


@pytest.mark.django_db
def test_a_storage_out_of_reach_leaves_the_job_to_the_sweep_not_failed(settings, empty_queues):
    model = model_register(name="away", path=str(built("ddpm")), steps=2, batch_size=2)
    warm = job_launch(version=model.current_version, count=1)
    chunk_run(job_id=warm.pk, seeds=[0])  # the worker has the model loaded
    reachable = settings.STORAGES
    job = job_launch(version=model.current_version, count=2)
    settings.STORAGES = {**reachable, "default": unreachable_storage()}
    chunk_run(job_id=job.pk, seeds=[1, 2])
    job.refresh_from_db()
    assert (job.status, job.error, job.attempt) == ("running", "", 1)
    assert seeds_of(model.current_version) == [0]

    settings.STORAGES = reachable  # the storage is back: the sweep sends the lost chunk again
    silence(job, settings)
    assert jobs_sweep() == 1
    job.refresh_from_db()
    chunk_run(job_id=job.pk, seeds=[1, 2], attempt=job.attempt)
    job.refresh_from_db()
    assert (job.status, job.resends) == ("done", 0)
    assert seeds_of(model.current_version) == [0, 1, 2]
