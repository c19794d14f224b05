"""Training jobs, LoRA and full fine-tuning of a Stable Diffusion base: each learns, resumes exactly
with EMA, Min-SNR weighting, fp16 and previews on, refuses what cannot run, and registers a model
that generates through a real worker."""

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from peft.utils import get_peft_model_state_dict
from PIL import Image as PILImage
from safetensors.torch import load_file

from generation.jobs import job_launch
from generation.models import GeneratedImage, GenerationJob, GenerativeModel, TrainingJob
from generation.services import model_register, model_settings_update
from generation.store import LORA_WEIGHTS
from generation.tiny import build_ddpm, build_lora, build_stable_diffusion
from generation.training import (
    Params,
    checkpoint_latest,
    checkpoint_step,
    job_folder,
    training_images,
    training_loop,
    training_run,
)
from generation.training_jobs import training_cancel, training_launch, training_prompt, training_retry
from tests.conftest import stored_names, wait_until, worker_environment
from tests.generation.models import stored_checkpoint, stored_tensors
from tests.studies.study_fixtures import make_real_set

FINDINGS = ["effusion", "", "cardiomegaly", "effusion"]
PROMPTS = ["chest x-ray, effusion", "chest x-ray", "chest x-ray, cardiomegaly", "chest x-ray, effusion"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_stable_diffusion(tmp_path_factory.mktemp("bases") / "tiny-sd")


def phantoms_with_findings(name: str = "training phantoms"):
    image_set = make_real_set(len(FINDINGS), name=name)
    for image, finding in zip(image_set.images.order_by("pk"), FINDINGS, strict=True):
        image.finding = finding
        image.save(update_fields=["finding"])
    return image_set


def register_base(path: Path, name: str = "tiny-sd") -> GenerativeModel:
    return model_register(
        name=name, path=str(path), prompts=["frontal chest x-ray"], scheduler="ddim", steps=3, guidance=2.0,
        negative_prompt="text",
    )  # fmt: skip


def fine_tune(method: str, base: Path, **changes) -> Params:
    return Params(**{
        "steps": 4, "batch_size": 2, "learning_rate": 1e-3, "resolution": 32, "seed": 5, "method": method,
        "base_path": str(base), "checkpoint_every": 1000,
    } | changes)  # fmt: skip


def test_an_images_prompt_is_its_finding_through_the_template():
    assert training_prompt("chest x-ray, {finding}", "pleural  effusion") == "chest x-ray, pleural effusion"
    assert training_prompt("chest x-ray, {finding}", "") == "chest x-ray"
    assert training_prompt("{finding}, frontal view", " ") == "frontal view"
    assert training_prompt("chest x-ray", "effusion") == "chest x-ray"


@pytest.mark.parametrize(
    "method, options", [("lora", {"rank": 8, "learning_rate": 3e-2}), ("full", {"learning_rate": 5e-3})]
)
def test_each_method_learns_a_fixed_batch(db, tiny_sd, method, options):
    """All four images in every step (a fixed batch): the loss of the last steps is below the first."""
    images, listing = training_images(image_sets=[phantoms_with_findings()], resolution=32)
    prompts = [training_prompt("chest x-ray, {finding}", item["finding"]) for item in listing]
    assert prompts == PROMPTS
    params = fine_tune(method, tiny_sd, steps=12, batch_size=4, seed=7, **options)
    outcome = training_loop(params=params, images=images, checkpoints="run", until=12, prompts=prompts)
    losses = [loss for _, loss in outcome.losses]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.95 * sum(losses[:4]) / 4, losses


def test_lora_with_ema_min_snr_and_fp16_resumes_exactly_and_previews_change_nothing(db, tiny_sd):
    """A straight run drawing previews against one stopped at step 2, resumed, and drawing none."""
    images, _ = training_images(image_sets=[phantoms_with_findings()], resolution=32)
    params = fine_tune("lora", tiny_sd, ema=True, snr_gamma=5.0, mixed_precision="fp16", preview_every=2,
                       checkpoint_every=2)  # fmt: skip
    grids = []
    straight = training_loop(
        params=params, images=images, checkpoints="straight", until=4, prompts=PROMPTS,
        on_preview=lambda step, picture: grids.append((step, picture)), preview_guidance=1.0,
    )  # fmt: skip
    first = training_loop(params=params, images=images, checkpoints="stopped", until=2, prompts=PROMPTS)
    saved, weights = stored_checkpoint(checkpoint_latest("stopped"))
    resumed = training_loop(params=params, images=images, checkpoints="stopped", until=4, prompts=PROMPTS)

    assert (first.step, resumed.resumed_from, resumed.step) == (2, 2, 4)
    expected = dict(straight.unet.named_parameters())
    assert any("lora" in name for name in expected)
    for name, parameter in resumed.unet.named_parameters():
        assert torch.equal(parameter, expected[name]), name
        assert parameter.dtype == torch.float32
    assert resumed.losses == straight.losses and all(0 < loss < 100 for _, loss in straight.losses)
    # The checkpoint holds the adapter only (the base stays as registered), the EMA and the loss scale.
    assert weights and all("lora" in name for name in weights)
    assert len(saved["ema"]["shadow_params"]) == len(weights) and saved["ema"]["optimization_step"] == 2
    assert saved["scaler"]["scale"] > 1
    assert [step for step, _ in grids] == [2, 4]
    assert all(picture.size == (64, 64) and picture.mode == "L" for _, picture in grids)


def train_args(base: str | None, **changes) -> list[str]:
    options = {
        "--name": "cxr-tuned", "--set": "training phantoms", "--method": "lora", "--base": base,
        "--steps": "3", "--batch": "2", "--lr": "1e-3", "--resolution": "32", "--seed": "3",
        "--checkpoint-every": "2",
    } | changes  # fmt: skip
    return [part for key, value in options.items() if value is not None for part in (key, value)]


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    from django.conf import settings

    return subprocess.run(
        [sys.executable, "manage.py", "train", *args, "--wait"],
        cwd=settings.BASE_DIR,
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def generates_two_images(model: GenerativeModel) -> list[GeneratedImage]:
    version = model_settings_update(model=model, steps=2, batch_size=2)
    generation = job_launch(version=version, count=2)
    wait_until(
        lambda: GenerationJob.objects.get(pk=generation.pk).status in ("done", "failed"),
        timeout=180,
        what="generation with the trained model",
    )
    assert GenerationJob.objects.get(pk=generation.pk).error == ""
    return list(GeneratedImage.objects.filter(version=version))


@pytest.mark.services
def test_lora_trains_on_a_real_worker_registers_the_base_plus_its_adapter_and_generates(
    celery_workers, tiny_sd
):
    celery_workers.start()
    image_set = phantoms_with_findings()
    base = register_base(tiny_sd)
    options = {"--ema": "", "--snr-gamma": "5", "--preview-every": "2", "--rank": "2"}
    args = train_args("tiny-sd") + [part for key, value in options.items() for part in (key, value) if part]
    result = run_train(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[##############################] step 3/3 loss" in result.stdout
    job = TrainingJob.objects.get()
    model = job.model
    assert (job.status, job.base, job.ema, job.snr_gamma, job.rank) == ("done", base, True, 5.0, 2)
    # The base's stored pipeline (nothing stored twice) and the adapter, stored on its own.
    assert (model.digest, model.path, model.lora_path) == (base.digest, base.path, f"training job {job.pk}")
    adapter = f"models/{model.lora_digest}"
    assert stored_names(adapter) == {f"{adapter}/{name}" for name in ("manifest.json", LORA_WEIGHTS)}
    assert model.pipeline_class == "StableDiffusionPipeline"
    # The first version generates as the base did, at the trained size, with the prompts it learned.
    version = model.current_version
    assert (version.scheduler, version.steps, version.guidance, version.negative_prompt) == (
        "ddim",
        3,
        2.0,
        "text",
    )
    assert version.size == 32 and sorted(version.prompts) == sorted(set(PROMPTS))
    record = job.record
    assert record["base"]["name"] == "tiny-sd" and record["base"]["version"] == 1
    assert record["base"]["path"] == base.path and record["base"]["digest"] == base.digest and record["peft"]
    assert record["prompt_template"] == "chest x-ray, {finding}"
    assert dict(map(tuple, record["prompts"])) == {
        "chest x-ray, effusion": 2, "chest x-ray": 1, "chest x-ray, cardiomegaly": 1
    }  # fmt: skip
    assert [item["finding"] for item in record["images"]] == FINDINGS

    # Previews: listed in step order, kept when the checkpoints are removed.
    assert job.previews == [
        {"step": 2, "file": f"{job.pk}/previews/step-2.png"},
        {"step": 3, "file": f"{job.pk}/previews/step-3.png"},
    ]
    for preview in job.previews:
        picture = PILImage.open(default_storage.open(f"training/{preview['file']}"))
        assert (picture.size, picture.mode) == ((64, 64), "L")
    assert stored_names(f"training/{job.pk}") == {f"training/{p['file']}" for p in job.previews}

    # The adapter holds the EMA weights of the same run made here, straight.
    images, _ = training_images(image_sets=[image_set], resolution=32)
    params = fine_tune("lora", tiny_sd, steps=3, seed=3, rank=2, ema=True, snr_gamma=5.0, checkpoint_every=2)
    straight = training_loop(params=params, images=images, checkpoints="straight", until=3, prompts=PROMPTS)
    saved = stored_tensors(model.lora_digest, "pytorch_lora_weights.safetensors")
    expected = get_peft_model_state_dict(straight.unet)
    assert len(saved) == len(expected) > 0
    assert all(torch.equal(saved[f"unet.{key}"], tensor) for key, tensor in expected.items())

    made = generates_two_images(model)
    assert len(made) == 2 and {image.prompt for image in made} <= set(PROMPTS)


@pytest.mark.services
def test_full_fine_tuning_trains_on_a_real_worker_registers_a_whole_folder_and_generates(
    celery_workers, tiny_sd
):
    celery_workers.start()
    phantoms_with_findings()
    register_base(tiny_sd)
    args = train_args("tiny-sd", **{"--method": "full", "--name": "cxr-full", "--lr": "1e-2"})
    result = run_train([*args, "--train-text-encoder", "--mixed-precision", "bf16"])
    assert result.returncode == 0, result.stdout + result.stderr
    job = TrainingJob.objects.get()
    model = job.model
    assert (job.status, model.name, model.lora_path) == ("done", "cxr-full", "")
    assert model.path == f"training job {job.pk}"
    index = json.loads(default_storage.open(f"models/{model.digest}/model_index.json").read())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert "peft" not in job.record and job.record["hyperparameters"]["train_text_encoder"] is True
    files = {"unet": "diffusion_pytorch_model", "text_encoder": "model", "vae": "diffusion_pytorch_model"}
    changed = {}
    for name, file in files.items():
        trained = stored_tensors(model.digest, f"{name}/{file}.safetensors")
        before = load_file(tiny_sd / name / f"{file}.safetensors")
        assert trained.keys() == before.keys()
        changed[name] = any(not torch.equal(tensor, before[key]) for key, tensor in trained.items())
    assert changed == {"unet": True, "text_encoder": True, "vae": False}
    assert stored_names(f"training/{job.pk}") == set()  # no previews asked for, no checkpoint left

    assert len(generates_two_images(model)) == 2


@pytest.mark.services
def test_a_lora_job_paused_on_one_host_resumes_exactly_on_another_that_shares_only_the_storage(
    celery_workers, settings, tiny_sd, tmp_path
):
    """The base's folder is gone once registered. The job takes one step here (a slice of 0 s: it
    pauses with a checkpoint in the storage), then a worker with an empty model cache and a
    temporary folder of its own fetches the base, resumes from the stored checkpoint and ends with
    the adapter of a run never stopped."""
    image_set = phantoms_with_findings()
    folder = shutil.copytree(tiny_sd, tmp_path / "registered-from")
    base = register_base(folder)
    shutil.rmtree(folder)
    job = training_launch(
        name="moved", image_sets=[image_set], method="lora", base=base, steps=3, batch_size=2,
        learning_rate=1e-3, resolution=32, seed=3, rank=2, checkpoint_every=2, ema=True,
    )  # fmt: skip
    settings.TRAINING_SLICE_SECONDS = 0
    assert training_run(job_id=job.pk) == "pause"
    assert checkpoint_step(checkpoint_latest(job_folder(job))) == 1
    assert training_cancel(job=job) and training_retry(job=TrainingJob.objects.get(pk=job.pk))

    other_host = tmp_path / "other-host"
    (other_host / "tmp").mkdir(parents=True)
    celery_workers.start(MODEL_CACHE_DIR=str(other_host / "model-cache"), TMPDIR=str(other_host / "tmp"))
    done = wait_until(
        lambda: (j := TrainingJob.objects.get(pk=job.pk)).status in ("done", "failed") and j,
        timeout=300,
        what="the job's end on the other host",
    )
    assert (done.status, done.error, done.step, done.attempt) == ("done", "", 3, 2)
    assert done.model.digest == base.digest and (other_host / "model-cache" / base.digest).is_dir()
    # Removed once the model was stored (just after the job is marked done).
    wait_until(lambda: checkpoint_latest(job_folder(job)) is None, timeout=30, what="checkpoints removed")

    images, _ = training_images(image_sets=[image_set], resolution=32)
    params = Params.of(done, base_path=str(tiny_sd))
    straight = training_loop(params=params, images=images, checkpoints="straight", until=3, prompts=PROMPTS)
    saved = stored_tensors(done.model.lora_digest, LORA_WEIGHTS)
    expected = get_peft_model_state_dict(straight.unet)
    assert len(saved) == len(expected) > 0
    assert all(torch.equal(saved[f"unet.{key}"], tensor) for key, tensor in expected.items())


@pytest.fixture(scope="module")
def base_folders(tiny_sd, tmp_path_factory):
    """A DDPM, a LoRA adapter, and copies of the tiny SD with a deeper UNet and with a huge one."""
    folder = tmp_path_factory.mktemp("more-bases")
    deeper = shutil.copytree(tiny_sd, folder / "deeper")
    config = json.loads((deeper / "unet" / "config.json").read_text())
    config["block_out_channels"] = [4, 8, 8, 8]  # three halvings: with the VAE's one, sides of 16
    (deeper / "unet" / "config.json").write_text(json.dumps(config))
    # A UNet's weights as large as the free disk, in a sparse file: real sizes, no bytes written.
    huge = shutil.copytree(tiny_sd, folder / "huge")
    weights = huge / "unet" / "diffusion_pytorch_model.safetensors"
    os.truncate(weights, shutil.disk_usage(folder).free)
    yield {
        "ddpm": build_ddpm(folder / "ddpm"), "lora": build_lora(tiny_sd, folder / "lora"), "deeper": deeper,
        "huge": huge,
    }  # fmt: skip
    weights.unlink()  # nothing may ever copy it


@pytest.fixture
def bases(db, tiny_sd, base_folders):
    """The tiny SD, a DDPM, the SD with a LoRA, a deeper SD, all stored; registered before models were
    stored (a path, no digest), a huge SD and one whose folder is gone; and one missing from the storage."""
    register_base(tiny_sd)
    model_register(name="tiny-ddpm", path=str(base_folders["ddpm"]), steps=2)
    model_register(
        name="tiny-sd-lora", path=str(tiny_sd), lora_path=str(base_folders["lora"]), prompts=["chest x-ray"]
    )
    model_register(name="deeper-sd", path=str(base_folders["deeper"]), prompts=["chest x-ray"])
    for name, folder in [("huge", base_folders["huge"]), ("gone", "/gone")]:
        GenerativeModel.objects.create(
            name=f"{name}-sd", path=str(folder), pipeline_class="StableDiffusionPipeline", native_size=32
        )
    GenerativeModel.objects.create(
        name="unstored-sd", path="/was/here", digest="0" * 64, pipeline_class="StableDiffusionPipeline",
        native_size=32,
    )  # fmt: skip
    phantoms_with_findings()


@pytest.mark.parametrize(
    "base, changes, message",
    [
        (None, {}, "LoRA fine-tuning needs a base: a registered text-to-image model to start from"),
        (None, {"--method": "full"}, "full fine-tuning needs a base"),
        (
            "nope",
            {},
            "No model named 'nope' is registered (models: deeper-sd, gone-sd, huge-sd, tiny-ddpm, tiny-sd",
        ),
        (
            "tiny-sd",
            {"--method": "unconditional"},
            "trains a UNet from scratch: leave the base (tiny-sd) out",
        ),
        (
            "tiny-ddpm",
            {},
            "LoRA fine-tuning is supported for StableDiffusionPipeline bases only; "
            "'tiny-ddpm' is a DDPMPipeline",
        ),
        ("tiny-sd-lora", {"--method": "full"}, "'tiny-sd-lora' carries a LoRA adapter"),
        ("deeper-sd", {"--resolution": "40"}, "'deeper-sd' takes sides that are multiples of 16 pixels"),
        ("tiny-sd", {"--rank": "0"}, "the LoRA rank must be between 1 and 256 (got 0)"),
        ("tiny-sd", {"--rank": "257"}, "the LoRA rank must be between 1 and 256 (got 257)"),
        ("tiny-sd", {"--snr-gamma": "0"}, "the Min-SNR gamma must be above 0"),
        ("tiny-sd", {"--snr-gamma": "nan"}, "the Min-SNR gamma must be above 0"),
        (
            "tiny-sd",
            {"--prompt-template": "{finding}, {view}"},
            "may hold only the field {finding}; it holds {view}",
        ),
        (
            "tiny-sd",
            {"--prompt-template": "x-ray {finding"},
            "the prompt template 'x-ray {finding' does not format",
        ),
        ("tiny-sd", {"--prompt-template": "x-ray {0}"}, "it holds {0}"),
        ("tiny-sd", {"--preview-every": "-1"}, "previews come every 0 (none) or more steps (got -1)"),
        ("tiny-sd", {"--train-text-encoder": ""}, "only full fine-tuning trains the text encoder"),
        ("gone-sd", {}, "the base's UNet and VAE configs cannot be read (FileNotFoundError"),
        ("unstored-sd", {}, "cannot be read from the storage: the model 000000000000 is not in the storage"),
    ],
)
def test_train_refuses_what_cannot_run_before_any_work(bases, base, changes, message):
    flags = [key for key, value in changes.items() if value == ""]
    args = train_args(base, **{key: value for key, value in changes.items() if value != ""}) + flags
    with pytest.raises(CommandError) as refused:
        call_command("train", *args)
    assert message in str(refused.value)
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_too_little_free_disk_for_the_checkpoints_in_a_folder_storage_is_refused(
    filesystem_storage, bases, method
):
    """The checkpoints and the result go to the storage: a folder's free disk is checked (object
    storage reports none)."""
    with pytest.raises(CommandError, match="too little free disk for the checkpoints: about"):
        call_command("train", *train_args("huge-sd", **{"--method": method}))
    assert not TrainingJob.objects.exists()


def test_a_lora_job_on_a_small_base_passes_every_check(bases):
    call_command("train", *train_args("tiny-sd", **{"--snr-gamma": "5", "--preview-every": "2"}), "--ema",
                 stdout=io.StringIO())  # fmt: skip
    job = TrainingJob.objects.get()
    assert (job.method, job.base.name, job.ema, job.snr_gamma, job.preview_every) == (
        "lora",
        "tiny-sd",
        True,
        5,
        2,
    )


def test_an_unconditional_job_with_ema_and_min_snr_previews_and_registers_its_average(transactional_db):
    image_set = make_real_set(4, name="training phantoms")
    job = training_launch(
        name="cxr-ema", image_sets=[image_set], steps=3, batch_size=2, learning_rate=1e-3, resolution=32,
        width=8, seed=2, checkpoint_every=2, ema=True, snr_gamma=5.0, preview_every=2,
    )  # fmt: skip
    assert training_run(job_id=job.pk) == "done"
    job.refresh_from_db()
    assert (job.status, job.model.pipeline_class, job.record["base"]) == ("done", "DDPMPipeline", None)
    assert [preview["step"] for preview in job.previews] == [2, 3]
    for preview in job.previews:
        picture = PILImage.open(default_storage.open(f"training/{preview['file']}"))
        assert (picture.size, picture.mode) == ((64, 64), "L")
    params = Params(steps=3, batch_size=2, learning_rate=1e-3, resolution=32, width=8, seed=2, ema=True,
                    snr_gamma=5.0, checkpoint_every=2)  # fmt: skip
    images, _ = training_images(image_sets=[image_set], resolution=32)
    straight = training_loop(params=params, images=images, checkpoints="straight", until=3)
    saved = stored_tensors(job.model.digest, "unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[name], tensor) for name, tensor in straight.unet.state_dict().items())
    # The average, not the last weights: without EMA the same run ends elsewhere.
    plain = training_loop(params=replace(params, ema=False), images=images, checkpoints="plain", until=3)
    assert any(not torch.equal(saved[name], tensor) for name, tensor in plain.unet.state_dict().items())
