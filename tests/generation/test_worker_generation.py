"""Generation through real worker processes, including a worker killed mid-job (on Redis and RabbitMQ)."""

import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings

from generation.jobs import job_launch
from generation.models import GeneratedImage, GenerationJob
from generation.services import model_register
from tests.conftest import FAST_SWEEP, wait_until, worker_environment
from tests.generation.models import built

pytestmark = pytest.mark.services


def test_generate_wait_runs_a_job_on_a_real_worker_and_shows_progress(celery_workers):
    celery_workers.start()
    model_register(
        name="worker-sd", path=str(built("sd-clip")), steps=2, batch_size=2, prompts=["chest x ray"]
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", "--model", "worker-sd", "--count", "5", "--wait"],
        cwd=settings.BASE_DIR,
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[##############################] 5/5" in result.stdout
    assert "images/s" in result.stdout and "done." in result.stdout
    assert GeneratedImage.objects.filter(version__model__name="worker-sd").count() == 5


def test_generate_wait_exits_non_zero_when_the_job_fails(celery_workers, tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.generation.models import copy_of

    celery_workers.start()
    folder = copy_of("ddpm", tmp_path)
    for weights in (folder / "unet").glob("*.safetensors"):
        tensors = {
            k: (v.fill_(float("nan")) if k.startswith("conv_out") else v)
            for k, v in load_file(weights).items()
        }
        save_file(tensors, weights)
    model_register(name="worker-nan", path=str(folder), steps=2)
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", "--model", "worker-nan", "--count", "2", "--wait"],
        cwd=settings.BASE_DIR,
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert (
        "failed: Generation failed on seeds 0..1: RuntimeError: seed 0: NaN or infinite values"
        in result.stderr
    )


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(broker, celery_workers):
    """Kill the whole worker (main process and its child) in the middle of a job,
    start another: the job ends with exactly N images. RabbitMQ hands the killed worker's
    unacknowledged chunk to the new worker as soon as the connection drops. Redis would
    only after its visibility timeout and kombu's next pass over unacknowledged messages
    (every 100 s by default); long before that, beat's sweep sends the lost chunk again,
    as in a deployment, here after a short silence period."""
    on_redis = broker.startswith("redis://")
    _, first = celery_workers.start()
    model = model_register(name="killed", path=str(built("ddpm")), steps=40, batch_size=1)
    count = 12
    job = job_launch(version=model.current_version, count=count)
    wait_until(
        lambda: GeneratedImage.objects.filter(version=model.current_version).count() >= 3,
        timeout=120,
        what="three images",
    )
    os.killpg(first.pid, signal.SIGKILL)  # no warm shutdown: the chunk in hand is lost mid-way
    first.wait()
    celery_workers.start(beat=on_redis, **(FAST_SWEEP if on_redis else {}))
    wait_until(
        lambda: GenerationJob.objects.get(pk=job.pk).status == "done", timeout=240, what="the job's end"
    )
    seeds = list(GeneratedImage.objects.filter(version=model.current_version).values_list("seed", flat=True))
    assert sorted(seeds) == list(range(count))
    # Who handed the chunk on: RabbitMQ (the same attempt; no beat runs) or the sweep (a new one).
    attempt = GenerationJob.objects.get(pk=job.pk).attempt
    assert (attempt >= 2) if on_redis else (attempt == 1), attempt


def test_every_kind_registers_previews_and_generates_through_a_real_worker(celery_workers):
    from tests.generation.test_registry import KINDS

    celery_workers.start()
    jobs = []
    for kind, (_, options) in sorted(KINDS.items()):
        model = model_register(name=f"w-{kind}", path=str(built(kind)), steps=2, batch_size=3, **options)
        jobs.append(job_launch(version=model.current_version, count=4, base_seed=0, is_preview=True))
        jobs.append(job_launch(version=model.current_version, count=2))
    wait_until(
        lambda: all(GenerationJob.objects.get(pk=j.pk).status in ("done", "failed") for j in jobs),
        timeout=300,
        what="all jobs",
    )
    failed = {
        str(j): GenerationJob.objects.get(pk=j.pk).error
        for j in jobs
        if GenerationJob.objects.get(pk=j.pk).status != "done"
    }
    assert failed == {}
    assert GeneratedImage.objects.count() == 6 * len(KINDS)


def test_the_worker_parent_process_never_imports_torch():
    """CUDA must not be initialised in the prefork parent: loading the app and all of
    its tasks, as a worker's parent does, leaves torch unimported."""
    code = (
        "import django, sys; django.setup(); from config.celery import app; "
        "app.loader.import_default_modules(); import generation.tasks, studies.tasks; "
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["False", "False"], result.stderr
