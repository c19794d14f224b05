"""Training jobs, the unconditional method: the loop learns, resumes exactly, refuses bad input,
and its model registers and generates through a real worker."""

import subprocess
import sys

import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command

from generation.jobs import job_launch
from generation.models import GeneratedImage, GenerationJob, GenerativeModel, TrainingJob
from generation.services import model_settings_update
from generation.training import Params, training_images, training_loop
from tests.conftest import wait_until, worker_environment
from tests.generation.models import stored_tensors
from tests.studies.study_fixtures import make_real_set

TINY = dict(resolution=32, width=8, seed=7)


@pytest.fixture
def phantoms(db):
    return make_real_set(4, name="training phantoms")


def tiny_images(image_set):
    images, _ = training_images(image_sets=[image_set], resolution=32)
    return images


def test_the_loss_goes_down_on_a_fixed_batch(phantoms):
    params = Params(steps=30, batch_size=4, learning_rate=2e-3, checkpoint_every=1000, **TINY)
    outcome = training_loop(params=params, images=tiny_images(phantoms), checkpoints="run", until=30)
    losses = [loss for _, loss in outcome.losses]
    assert [step for step, _ in outcome.losses] == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_a_run_stopped_after_k_steps_and_resumed_ends_with_the_same_weights(phantoms):
    images = tiny_images(phantoms)
    params = Params(steps=6, batch_size=3, learning_rate=1e-3, checkpoint_every=2, **TINY)
    straight = training_loop(params=params, images=images, checkpoints="straight", until=6)
    first = training_loop(params=params, images=images, checkpoints="stopped", until=4)
    resumed = training_loop(params=params, images=images, checkpoints="stopped", until=6)
    assert (first.step, resumed.resumed_from, resumed.step) == (4, 4, 6)
    expected = dict(straight.unet.named_parameters())
    for name, parameter in resumed.unet.named_parameters():
        assert torch.equal(parameter, expected[name]), name
    assert resumed.losses == straight.losses


def test_a_pause_between_checkpoints_saves_one_and_resumes_exactly(phantoms):
    images = tiny_images(phantoms)
    params = Params(steps=5, batch_size=2, learning_rate=1e-3, checkpoint_every=100, **TINY)
    straight = training_loop(params=params, images=images, checkpoints="straight", until=5)
    paused = training_loop(
        params=params, images=images, checkpoints="paused", until=5,
        on_step=lambda step, losses: "pause" if step == 3 else "go",
    )  # fmt: skip
    resumed = training_loop(params=params, images=images, checkpoints="paused", until=5)
    assert (paused.stopped, paused.step, resumed.resumed_from) == ("pause", 3, 3)
    expected = dict(straight.unet.named_parameters())
    assert all(torch.equal(p, expected[name]) for name, p in resumed.unet.named_parameters())


def train_args(**changes) -> list[str]:
    options = {
        "--name": "cxr-unconditional", "--set": "training phantoms", "--method": "unconditional",
        "--steps": "8", "--batch": "2", "--lr": "1e-3", "--resolution": "32", "--seed": "3",
        "--width": "8", "--checkpoint-every": "4",
    } | changes  # fmt: skip
    return [part for key, value in options.items() for part in (key, value)]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--set": "no such set"}, "No image set named 'no such set'"),
        (
            {"--batch": "5"},
            "the batch of 5 needs at least as many images; the sets hold 'training phantoms': 4",
        ),
        (
            {"--resolution": "36"},
            "the resolution must be a multiple of 8 between 16 and 1024 pixels (got 36)",
        ),
        ({"--resolution": "8"}, "the resolution must be a multiple of 8 between 16 and 1024 pixels (got 8)"),
        ({"--resolution": "1032"}, "a multiple of 8 between 16 and 1024 pixels (got 1032)"),
        ({"--steps": "0"}, "steps must be at least 1 (got 0)"),
        ({"--lr": "0"}, "the learning rate must be above 0 and below 1 (got 0.0)"),
        ({"--width": "12"}, "the UNet's width must be a multiple of 8 between 8 and 512 (got 12)"),
        ({"--method": "lora"}, "LoRA fine-tuning needs a base: a registered text-to-image model"),
        ({"--method": "full"}, "full fine-tuning needs a base"),
        ({"--name": "=HYPERLINK()"}, "a model's name cannot start with '='"),
    ],
)
def test_train_refuses_bad_input_before_any_work(phantoms, changes, message):
    with pytest.raises(CommandError) as refused:
        call_command("train", *train_args(**changes))
    assert message in str(refused.value)
    assert not TrainingJob.objects.exists()


def test_train_refuses_a_name_already_registered(phantoms):
    GenerativeModel.objects.create(
        name="taken", path="/models/taken", pipeline_class="DDPMPipeline", native_size=32
    )
    with pytest.raises(CommandError, match="a model named 'taken' is already registered"):
        call_command("train", *train_args(**{"--name": "taken"}))
    assert not TrainingJob.objects.exists()


@pytest.mark.services
def test_train_wait_trains_in_slices_on_a_real_worker_exactly_and_the_model_generates(
    celery_workers, tmp_path
):
    """A slice of 0 s makes every step its own task, resumed from the previous one's checkpoint:
    the registered weights must equal those of one straight run in this process."""
    celery_workers.start(TRAINING_SLICE_SECONDS="0")
    image_set = make_real_set(4, name="training phantoms")
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "train",
            *train_args(**{"--steps": "4", "--checkpoint-every": "3"}),
            "--wait",
        ],
        cwd=settings.BASE_DIR,
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[##############################] step 4/4 loss" in result.stdout
    job = TrainingJob.objects.get()
    assert (job.status, job.step, len(job.loss_history)) == ("done", 4, 4)
    assert job.model.name == "cxr-unconditional" and job.model.pipeline_class == "DDPMPipeline"
    assert job.model.native_size == 32
    record = job.record
    assert record["base"] is None and record["device"] == "cpu" and record["seed"] == 3
    assert [i["id"] for i in record["images"]] == list(
        image_set.images.order_by("pk").values_list("pk", flat=True)
    )
    assert record["images"][0]["png_sha256"] == image_set.images.order_by("pk")[0].png_sha256
    assert record["hyperparameters"] == {
        "method": "unconditional", "steps": 4, "batch_size": 2, "learning_rate": 1e-3, "resolution": 32,
        "seed": 3, "width": 8, "checkpoint_every": 3, "mixed_precision": "no", "ema": False,
        "snr_gamma": None, "rank": 4, "prompt_template": "chest x-ray, {finding}",
        "train_text_encoder": False, "preview_every": 0,
    }  # fmt: skip
    assert record["loss_history"] == job.loss_history and record["torch"] == torch.__version__
    params = Params(
        steps=4, batch_size=2, learning_rate=1e-3, checkpoint_every=3, resolution=32, width=8, seed=3
    )
    straight = training_loop(params=params, images=tiny_images(image_set), checkpoints="straight", until=4)
    assert job.model.path == f"training job {job.pk}" and job.model.digest
    trained = stored_tensors(job.model.digest, "unet/diffusion_pytorch_model.safetensors")
    assert trained.keys() == straight.unet.state_dict().keys()
    assert all(torch.equal(trained[name], tensor) for name, tensor in straight.unet.state_dict().items())
    assert straight.losses == job.loss_history

    version = model_settings_update(model=job.model, steps=2)
    generation = job_launch(version=version, count=2)
    wait_until(
        lambda: GenerationJob.objects.get(pk=generation.pk).status in ("done", "failed"),
        timeout=120,
        what="generation with the trained model",
    )
    assert GenerationJob.objects.get(pk=generation.pk).error == ""
    assert GeneratedImage.objects.filter(version=version).count() == 2


def test_a_job_cancelled_mid_run_stops_at_the_next_step_and_keeps_its_checkpoint(transactional_db, settings):
    import threading

    from django.db import connection

    from generation.training import checkpoint_latest, checkpoint_step, job_folder, training_run
    from generation.training_jobs import training_cancel, training_launch

    image_set = make_real_set(4, name="training phantoms")
    job = training_launch(
        name="cancelled", image_sets=[image_set], steps=500, batch_size=2, learning_rate=1e-3,
        checkpoint_every=1, **TINY,
    )  # fmt: skip
    outcome = []

    def work():
        try:
            outcome.append(training_run(job_id=job.pk))
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    wait_until(lambda: TrainingJob.objects.get(pk=job.pk).step >= 2, timeout=60, what="two steps")
    assert training_cancel(job=job)
    worker.join(timeout=60)
    job.refresh_from_db()
    assert outcome == ["cancel"] and job.status == "cancelled" and job.model is None
    kept = checkpoint_latest(job_folder(job))
    assert kept is not None and 2 <= checkpoint_step(kept) < 500
    assert not GenerativeModel.objects.filter(name="cancelled").exists()


def test_the_admin_shows_a_training_jobs_status_step_and_loss(client, researcher, phantoms):
    job = TrainingJob.objects.create(
        name="shown", steps=40, batch_size=2, learning_rate=1e-3, resolution=32, status="running",
        step=12, loss_history=[[11, 0.5], [12, 0.4321]],
    )  # fmt: skip
    client.force_login(researcher)
    listing = client.get("/admin/generation/trainingjob/").content.decode()
    assert '<progress max="40" value="12"></progress> 12 / 40' in listing and "0.4321" in listing
    page = client.get(f"/admin/generation/trainingjob/{job.pk}/change/").content.decode()
    assert "step 12 of 40" in page and "loss 0.4321" in page
    assert 'aria-label="Training progress">12 / 40</progress>' in page


def test_bf16_mixed_precision_trains_float32_weights_with_a_finite_loss(phantoms):
    params = Params(steps=2, batch_size=2, learning_rate=1e-3, mixed_precision="bf16", **TINY)
    outcome = training_loop(params=params, images=tiny_images(phantoms), checkpoints="bf16", until=2)
    assert all(p.dtype == torch.float32 for p in outcome.unet.parameters())
    assert all(0 < loss < 10 for _, loss in outcome.losses)
