"""Training jobs survive their workers: a killed pool process, a killed worker, a retry.

Every way back resumes from the last checkpoint, which is in the storage only, and ends
with the weights of a run that was never stopped (the same seed, on the CPU).
"""

import os
import signal
import subprocess
import time

import pytest
import torch
from django.utils import timezone

from config.celery import app as celery_app
from generation.models import TrainingJob
from generation.operations import queue_lengths
from generation.training import (
    Params,
    checkpoint_latest,
    checkpoint_step,
    job_folder,
    training_images,
    training_loop,
    training_run,
)
from generation.training_jobs import (
    MAX_RESUMES,
    training_cancel,
    training_launch,
    training_retry,
    training_sweep,
)
from tests.conftest import wait_until
from tests.generation.models import stored_tensors
from tests.studies.study_fixtures import make_real_set

TINY = dict(resolution=32, width=8, seed=5, batch_size=2, learning_rate=1e-3)


def straight_weights(job: TrainingJob) -> dict[str, torch.Tensor]:
    images, _ = training_images(image_sets=job.image_sets.all(), resolution=job.resolution)
    outcome = training_loop(params=Params.of(job), images=images, checkpoints="straight", until=job.steps)
    return outcome.unet.state_dict()


def trained_weights(job: TrainingJob) -> dict[str, torch.Tensor]:
    return stored_tensors(job.model.digest, "unet/diffusion_pytorch_model.safetensors")


def pool_children(worker: subprocess.Popen) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def job_now(job: TrainingJob) -> TrainingJob:
    return TrainingJob.objects.get(pk=job.pk)


@pytest.mark.services
def test_a_killed_pool_process_and_a_killed_worker_both_resume_exactly(celery_workers, settings, tmp_path):
    """The pool process dies (the out-of-memory killer's way): the broker hands the task on
    at once (late acks, reject on worker lost) and it resumes from the checkpoint. Then the
    whole worker dies: its task is lost until the broker's visibility timeout, so the sweep
    (beat's job, called here) queues the job again and a new worker, on a host of its own
    (another model cache and temporary folder), finishes it from the stored checkpoint."""
    settings.TRAINING_SILENCE_SECONDS = 2
    image_set = make_real_set(4, name="phantoms")
    job = training_launch(name="survivor", image_sets=[image_set], steps=120, checkpoint_every=10, **TINY)
    _, worker = celery_workers.start()
    folder = job_folder(job)

    def checkpointed(step: int):
        return lambda: (latest := checkpoint_latest(folder)) and checkpoint_step(latest) >= step

    wait_until(checkpointed(20), timeout=180, what="a checkpoint at step 20")
    children = pool_children(worker)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    killed_at = checkpoint_step(checkpoint_latest(folder))
    wait_until(checkpointed(killed_at + 30), timeout=180, what="checkpoints of the redelivered task")
    assert job_now(job).status == "running" and job_now(job).attempt == 1

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    stopped = job_now(job)
    assert stopped.status == "running" and stopped.step < stopped.steps
    time.sleep(settings.TRAINING_SILENCE_SECONDS + 1)
    assert training_sweep() == 1
    queued = job_now(job)
    assert (queued.status, queued.attempt, queued.resumes) == ("queued", 2, 1)

    other_host = tmp_path / "other-host"
    (other_host / "tmp").mkdir(parents=True)
    celery_workers.start(MODEL_CACHE_DIR=str(other_host / "model-cache"), TMPDIR=str(other_host / "tmp"))
    done = wait_until(
        lambda: (j := job_now(job)).status in ("done", "failed") and j, timeout=600, what="the job's end"
    )
    assert (done.status, done.error, done.step) == ("done", "", 120)
    trained = trained_weights(done)
    expected = straight_weights(done)
    assert trained.keys() == expected.keys()
    assert all(torch.equal(trained[name], tensor) for name, tensor in expected.items())


def test_the_sweep_leaves_reporting_jobs_alone_and_gives_up_after_its_resumes(db, settings):
    settings.TRAINING_SILENCE_SECONDS = 60
    image_set = make_real_set(2, name="phantoms")
    fresh = training_launch(name="fresh", image_sets=[image_set], steps=10, checkpoint_every=5, **TINY)
    silent = training_launch(name="silent", image_sets=[image_set], steps=10, checkpoint_every=5, **TINY)
    long_ago = timezone.now() - timezone.timedelta(seconds=120)
    TrainingJob.objects.filter(pk=fresh.pk).update(status="running", heartbeat=timezone.now())
    TrainingJob.objects.filter(pk=silent.pk).update(status="running", heartbeat=long_ago, resumes=MAX_RESUMES)
    assert training_sweep() == 1
    assert job_now(fresh).status == "running"
    gave_up = job_now(silent)
    assert gave_up.status == "failed" and f"{MAX_RESUMES + 1} times" in gave_up.error
    assert "Retry resumes it from its last checkpoint" in gave_up.error


def test_a_retried_job_resumes_exactly_and_the_earlier_attempts_task_stands_down(transactional_db, settings):
    settings.TRAINING_SLICE_SECONDS = 0  # the task pauses after one step, with a checkpoint
    image_set = make_real_set(4, name="phantoms")
    job = training_launch(name="retried", image_sets=[image_set], steps=6, checkpoint_every=4, **TINY)
    assert training_run(job_id=job.pk, attempt=1) == "pause"
    assert training_cancel(job=job)
    assert training_retry(job=job_now(job))
    retried = job_now(job)
    assert (retried.status, retried.attempt, retried.error, retried.step) == ("queued", 2, "", 1)
    assert training_run(job_id=job.pk, attempt=1) == "cancel"
    assert job_now(job).status == "queued"  # the stale task touched nothing

    settings.TRAINING_SLICE_SECONDS = 3600
    assert training_run(job_id=job.pk, attempt=2) == "done"
    done = job_now(job)
    assert done.status == "done" and done.model.name == "retried" and done.step == 6
    trained = trained_weights(done)
    expected = straight_weights(done)
    assert all(torch.equal(trained[name], tensor) for name, tensor in expected.items())
    assert not training_retry(job=done)  # a finished job is not trained again


@pytest.mark.services
def test_a_queued_job_whose_task_the_broker_lost_is_sent_again(transactional_db, settings):
    """The task vanished with a broker that kept nothing (purged here, for real); the sweep sends
    it again once the job has waited the silence period with nothing in the gpu queue."""
    settings.TRAINING_SILENCE_SECONDS = 60
    image_set = make_real_set(2, name="phantoms")
    celery_app.control.purge()
    lost = training_launch(name="lost", image_sets=[image_set], steps=10, checkpoint_every=5, **TINY)
    waiting = training_launch(name="waiting", image_sets=[image_set], steps=10, checkpoint_every=5, **TINY)
    TrainingJob.objects.filter(pk=lost.pk).update(created=timezone.now() - timezone.timedelta(seconds=120))
    assert queue_lengths()["gpu"] == 2
    assert training_sweep() == 0  # their tasks wait in the queue: nothing is lost
    celery_app.control.purge()  # the broker loses them
    assert training_sweep() == 1  # only the job past its silence
    assert (job_now(lost).status, job_now(lost).attempt) == ("queued", 2)
    assert job_now(waiting).attempt == 1
    assert queue_lengths()["gpu"] == 1  # its task, sent again
    assert training_sweep() == 0  # not twice: it waits in the queue now
    celery_app.control.purge()
