"""Training on a worker: the loop (every method), exact checkpoints, previews, the registered result.

Imported only inside a worker's child process (the `train` task imports it there): it
imports torch, which must never be initialised in the prefork parent or the web process.
What each method trains and how is in generation/training_methods.py.

Resuming is exact: the trained weights, the optimizer, the EMA, the loss scaler, the noise
generator and the step are in each checkpoint, and the data order is a function of
(seed, step) alone, so a run stopped at any checkpoint and resumed ends with the same
weights as one never stopped. Previews run with torch's random state set aside.
"""

import io
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import peft
import torch
from celery.exceptions import SoftTimeLimitExceeded
from diffusers.training_utils import EMAModel
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from studies.imaging.normalise import normalise
from studies.models import Image

from .models import TrainingJob
from .services import model_register
from .training_jobs import training_prompt
from .training_methods import PREVIEW_SEEDS, Trainee, loss_of, random_state_kept, trainee_build
from .training_methods import noise_scheduler as noise_scheduler  # the unconditional one, for callers
from .training_methods import unet_build as unet_build

Status = TrainingJob.Status
# At most this many points in a job's loss history: each is the mean over its interval.
HISTORY_POINTS = 1000
# Progress is written at most this often (cancel is read every step).
REPORT_SECONDS = 1.0
HYPERPARAMETERS = TrainingJob.HYPERPARAMETERS
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Params:
    steps: int
    batch_size: int
    learning_rate: float
    resolution: int
    seed: int
    width: int = 32
    checkpoint_every: int = 500
    mixed_precision: str = "no"
    ema: bool = False
    snr_gamma: float | None = None
    rank: int = 4
    prompt_template: str = "chest x-ray, {finding}"
    train_text_encoder: bool = False
    preview_every: int = 0
    method: str = "unconditional"
    base_path: str = ""  # lora and full: the registered base's pipeline folder

    @classmethod
    def of(cls, job: TrainingJob) -> "Params":
        base_path = job.base.path if job.base_id else ""
        return cls(**{name: getattr(job, name) for name in HYPERPARAMETERS}, base_path=base_path)

    @property
    def log_every(self) -> int:
        return max(1, self.steps // HISTORY_POINTS)

    def previews_at(self, step: int) -> bool:
        return bool(self.preview_every) and (step % self.preview_every == 0 or step == self.steps)


@dataclass
class Outcome:
    trainee: Trainee
    step: int
    stopped: str  # "done" (reached `until`), "cancel" or "pause"
    resumed_from: int
    losses: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unet(self) -> torch.nn.Module:
        return self.trainee.unet


# --- Data ----------------------------------------------------------------------------


def training_images(*, image_sets, resolution: int) -> tuple[torch.Tensor, list[dict]]:
    """Every image of the sets as (N, 1, R, R) uint8, and the list of them for the record.

    Each stored reader PNG goes through the one normaliser to the training resolution,
    so training sees what readers see. Kept as 8 bits (what the normaliser writes) to
    hold four times as many images in memory as floats would.
    """
    images = Image.objects.filter(image_set__in=image_sets).order_by("pk")
    pixels, listing = [], []
    for image in images:
        with image.file.open("rb") as stored:
            grey = np.asarray(PILImage.open(io.BytesIO(stored.read())).convert("L"), dtype=np.float32) / 255
        resized = PILImage.open(io.BytesIO(normalise(grey, size=resolution)))
        pixels.append(torch.from_numpy(np.array(resized, dtype=np.uint8)))
        listing.append(
            {
                "id": image.pk,
                "png_sha256": image.png_sha256,
                "source_sha256": image.source_sha256,
                "finding": image.finding,
            }
        )
    return torch.stack(pixels)[:, None], listing


def batch_indices(*, seed: int, step: int, batch_size: int, count: int) -> torch.Tensor:
    """The images of step `step` (0-based): each epoch is one permutation seeded by (seed, epoch).

    A function of its arguments alone, so a resumed run needs no saved data order.
    """
    positions = range(step * batch_size, (step + 1) * batch_size)
    orders: dict[int, torch.Tensor] = {}
    picked = []
    for position in positions:
        epoch = position // count
        if epoch not in orders:
            generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
            orders[epoch] = torch.randperm(count, generator=generator)
        picked.append(orders[epoch][position % count])
    return torch.stack(picked)


def training_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- Checkpoints ---------------------------------------------------------------------


def checkpoint_save(folder: Path, *, weights: dict, state: dict, step: int) -> Path:
    """Write step-<n>/ (weights.safetensors, state.pt) via a temporary folder and one rename.

    A worker killed mid-write leaves a temporary folder, never a half checkpoint; the
    older checkpoints are removed only once the new one is in place.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:09d}"
    temporary = folder / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    save_file(weights, temporary / "weights.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "rng": rng, "step": step}, temporary / "state.pt")
    if final.exists():  # the same step written by an earlier delivery of the task
        shutil.rmtree(final)
    os.replace(temporary, final)
    for older in folder.glob("step-*"):
        if older.name < final.name:
            shutil.rmtree(older, ignore_errors=True)
    return final


def checkpoint_latest(folder: Path) -> Path | None:
    done = sorted(folder.glob("step-*")) if folder.is_dir() else []
    return done[-1] if done else None


def checkpoint_load(path: Path) -> tuple[dict, dict]:
    """The weights and the state of a checkpoint; torch's random state is restored here."""
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return load_file(path / "weights.safetensors"), state


def checkpoints_remove(folder: Path) -> None:
    """Delete a finished job's checkpoints; its previews stay."""
    for path in [*folder.glob("step-*"), *folder.glob(".tmp-step-*")]:
        shutil.rmtree(path, ignore_errors=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# --- The loop ------------------------------------------------------------------------


def training_loop(*, params: Params, images: torch.Tensor, folder: Path, until: int, on_step=None,
                  prompts: list[str] | None = None, on_preview=None,
                  preview_guidance: float = 7.5) -> Outcome:  # fmt: skip
    """Train from the latest checkpoint in `folder` (or from scratch) up to step `until`.

    `on_step(step, losses)` is called after every step and answers "go", "cancel" (stop;
    the last checkpoint stays) or "pause" (checkpoint now and stop, to be resumed).
    `prompts` (lora and full) is each image's prompt. With `params.preview_every`,
    `on_preview(step, picture)` receives a grid drawn at seeds 0..3 every that many steps
    and at the last. With `params.ema`, the weights of a run that reaches `until` are the
    moving average: what gets saved.
    """
    device = training_device()
    trainee = trainee_build(params=params, images=images, prompts=prompts, device=device)
    trainee.train()
    parameters = trainee.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=params.learning_rate)
    ema = EMAModel(parameters) if params.ema else None
    # Loss scaling keeps fp16 gradients from underflowing; disabled, it passes everything through.
    scaler = torch.amp.GradScaler(device, enabled=params.mixed_precision == "fp16")
    generator = torch.Generator().manual_seed(params.seed)
    state = {"losses": [], "pending": [], "seconds": 0.0}
    step = 0
    if latest := checkpoint_latest(folder):
        weights, state = checkpoint_load(latest)
        trainee.load_weights(weights)
        optimizer.load_state_dict(state.pop("optimizer"))
        scaler.load_state_dict(state.pop("scaler"))
        generator.set_state(state.pop("generator"))
        if ema:
            ema.load_state_dict(state.pop("ema"))
            ema.to(device)
        state.pop("ema", None)
        step = state.pop("step")
    resumed_from = step
    dtype = AUTOCAST.get(params.mixed_precision, torch.bfloat16)
    autocast = torch.autocast(device, dtype=dtype, enabled=params.mixed_precision in AUTOCAST)
    started = time.perf_counter()

    def save():
        everything = {
            **state,
            "seconds": state["seconds"] + time.perf_counter() - started,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "generator": generator.get_state(),
            "ema": ema.state_dict() if ema else None,
        }
        checkpoint_save(folder, weights=trainee.weights(), state=everything, step=step)

    def preview():
        if ema:
            ema.store(parameters)
            ema.copy_to(parameters)
        trainee.train(False)
        try:
            with random_state_kept(device):
                picture = trainee.draw(
                    seeds=PREVIEW_SEEDS, resolution=params.resolution, guidance=preview_guidance
                )
        finally:
            trainee.train(True)
            if ema:
                ema.restore(parameters)
        on_preview(step, picture)

    while step < until:
        chosen = batch_indices(seed=params.seed, step=step, batch_size=params.batch_size, count=len(images))
        with autocast:
            predicted, target, timesteps = trainee.predict(chosen, generator)
        loss = loss_of(
            predicted, target, timesteps, noise_scheduler=trainee.noise_scheduler, snr_gamma=params.snr_gamma
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema:
            ema.step(parameters)
        step += 1
        state["pending"].append(loss.detach().float().cpu())
        if step % params.log_every == 0 or step == params.steps:
            state["losses"].append([step, float(torch.stack(state["pending"]).mean())])
            state["pending"] = []
        if on_preview and params.previews_at(step):
            preview()
        if step % params.checkpoint_every == 0:
            save()
        answer = on_step(step, state["losses"]) if on_step else "go"
        if answer == "cancel":
            return Outcome(trainee, step, "cancel", resumed_from, state["losses"])
        if answer == "pause" and step < until:
            if step % params.checkpoint_every:
                save()
            return Outcome(trainee, step, "pause", resumed_from, state["losses"])
    if ema:
        ema.copy_to(parameters)
    seconds = state["seconds"] + time.perf_counter() - started
    return Outcome(trainee, step, "done", resumed_from, state["losses"], seconds)


# --- A job on a worker ---------------------------------------------------------------


def job_folder(job: TrainingJob) -> Path:
    return Path(settings.TRAINING_ROOT) / str(job.pk)


def training_run(*, job_id: int, attempt: int = 1) -> str:
    """Run (or resume) a training job; returns the loop's outcome: "done", "cancel" or "pause".

    Safe to deliver twice: a job that is no longer queued or running, or whose attempt
    has moved on (a retry, a sweep), is left alone.
    """
    now = timezone.now()
    mine = TrainingJob.objects.filter(pk=job_id, attempt=attempt)
    if not mine.filter(status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.RUNNING, heartbeat=now
    ):
        return "cancel"
    TrainingJob.objects.filter(pk=job_id, started__isnull=True).update(started=now)
    job = TrainingJob.objects.select_related("base").get(pk=job_id)
    params = Params.of(job)
    try:
        images, listing = training_images(image_sets=job.image_sets.all(), resolution=job.resolution)
        prompts = None
        if job.base_id:
            prompts = [training_prompt(job.prompt_template, item["finding"]) for item in listing]
        outcome = training_loop(
            params=params,
            images=images,
            folder=job_folder(job),
            until=job.steps,
            on_step=_reporter(job_id, attempt),
            prompts=prompts,
            on_preview=_previewer(job_id, attempt),
            preview_guidance=job.base.current_version.guidance if job.base_id else 0.0,
        )
        _report(job_id, attempt, outcome.step, outcome.losses)
        if outcome.stopped == "done":
            _finish(job, outcome, listing, prompts)
        return outcome.stopped
    except SoftTimeLimitExceeded:
        _fail(
            job_id,
            attempt,
            "One training step ran past the task's soft time limit; the last checkpoint is kept.",
        )
        return "cancel"
    except Exception as exc:
        _fail(job_id, attempt, f"Training failed: {type(exc).__name__}: {exc}")
        raise


def _reporter(job_id: int, attempt: int):
    """The loop's on_step: reads cancel every step, writes progress about once a second,
    and asks for a pause once this task has run for TRAINING_SLICE_SECONDS."""
    deadline = time.monotonic() + settings.TRAINING_SLICE_SECONDS
    last = 0.0

    def on_step(step: int, losses: list) -> str:
        nonlocal last
        if not TrainingJob.objects.filter(pk=job_id, attempt=attempt, status=Status.RUNNING).exists():
            return "cancel"
        if time.monotonic() - last >= REPORT_SECONDS:
            _report(job_id, attempt, step, losses)
            last = time.monotonic()
        return "pause" if time.monotonic() > deadline else "go"

    return on_step


def _previewer(job_id: int, attempt: int):
    """The loop's on_preview: the grid as TRAINING_ROOT/<job>/previews/step-<n>.png, listed on the job.

    A step previewed again (resumed from an earlier checkpoint) replaces its entry.
    """

    def on_preview(step: int, picture: PILImage.Image) -> None:
        relative = f"{job_id}/previews/step-{step}.png"
        path = Path(settings.TRAINING_ROOT) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".tmp-{path.name}")
        picture.save(temporary, format="PNG")
        os.replace(temporary, path)
        with transaction.atomic():
            mine = TrainingJob.objects.select_for_update().filter(pk=job_id, attempt=attempt)
            listed = mine.values_list("previews", flat=True).first()
            if listed is not None:
                entries = [entry for entry in listed if entry["step"] != step]
                entries.append({"step": step, "file": relative})
                mine.update(previews=sorted(entries, key=lambda entry: entry["step"]))

    return on_preview


def _report(job_id: int, attempt: int, step: int, losses: list) -> None:
    TrainingJob.objects.filter(pk=job_id, attempt=attempt).update(
        step=step, loss_history=losses, heartbeat=timezone.now()
    )


def _fail(job_id: int, attempt: int, message: str) -> None:
    TrainingJob.objects.filter(pk=job_id, attempt=attempt, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.FAILED, error=message[:4000], finished=timezone.now()
    )


def _finish(job: TrainingJob, outcome: Outcome, listing: list[dict], prompts: list[str] | None) -> None:
    """Save what was trained under MODELS_ROOT, register it and record how it was made."""
    folder = Path(settings.MODELS_ROOT) / f"trained-{job.pk}"
    temporary = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    outcome.trainee.save(temporary)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier delivery that died before registering
    os.replace(temporary, folder)
    version = job.base.current_version if job.base_id else None
    record = {
        "base": _base_record(version),
        "method": job.method,
        "hyperparameters": {name: getattr(job, name) for name in HYPERPARAMETERS},
        "seed": job.seed,
        "image_sets": list(job.image_sets.order_by("pk").values_list("name", flat=True)),
        "images": listing,
        "unet": dict(outcome.unet.config),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name(0) if training_device() == "cuda" else "cpu",
        "seconds": round(outcome.seconds, 3),
        "loss_history": outcome.losses,
    }
    if prompts is not None:
        record["prompt_template"] = job.prompt_template
        record["prompts"] = [[prompt, count] for prompt, count in Counter(prompts).most_common()]
    if job.method == TrainingJob.Method.LORA:
        record["peft"] = peft.__version__
    with transaction.atomic():
        model = model_register(
            name=job.name,
            description=f"Trained by training job {job.pk} ({job.method}, {job.steps} steps).",
            **_registration(job, folder, version, prompts),
        )
        TrainingJob.objects.filter(pk=job.pk, attempt=job.attempt, status=Status.RUNNING).update(
            status=Status.DONE, model=model, record=_plain(record), finished=timezone.now()
        )
    # The checkpoints served their purpose: the registered folder holds the result.
    checkpoints_remove(job_folder(job))


def _registration(job: TrainingJob, folder: Path, version, prompts: list[str] | None) -> dict:
    """model_register's arguments: where the weights are, and the first version's settings.

    A fine-tune generates as its base did (scheduler, steps, guidance, negative prompt,
    dtype, batch), at the resolution it was trained at, with the prompts it learned.
    """
    if version is None:
        # 50 DDIM steps draw what 1000 DDPM steps would, twenty times faster.
        return {"path": str(folder), "scheduler": "ddim", "steps": 50}
    carried = ["scheduler", "steps", "guidance", "negative_prompt", "dtype", "batch_size"]
    settings = {name: getattr(version, name) for name in carried}
    settings |= {"size": job.resolution, "prompts": list(Counter(prompts).keys())}
    if job.method == TrainingJob.Method.LORA:
        return {"path": job.base.path, "lora_path": str(folder), **settings}
    return {"path": str(folder), **settings}


def _base_record(version) -> dict | None:
    if version is None:
        return None
    model = version.model
    return {
        "name": model.name,
        "version": version.number,
        "path": model.path,
        "pipeline_class": model.pipeline_class,
        "settings": version.settings_dict(),
    }


def _plain(value):
    """JSON-ready: the UNet's config holds tuples."""
    return json.loads(json.dumps(value, default=str))
