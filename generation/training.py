"""Training on a worker: the unconditional DDPM loop, exact checkpoints, the registered result.

Imported only inside a worker's child process (the `train` task imports it there): it
imports torch, which must never be initialised in the prefork parent or the web process.

Resuming is exact: the weights, the optimizer, the noise generator and the step are in
each checkpoint, and the data order is a function of (seed, step) alone, so a run
stopped at any checkpoint and resumed ends with the same weights as one never stopped.
"""

import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from studies.imaging.normalise import normalise
from studies.models import Image

from .models import TrainingJob
from .services import model_register

Status = TrainingJob.Status
NUM_TRAIN_TIMESTEPS = 1000
# At most this many points in a job's loss history: each is the mean over its interval.
HISTORY_POINTS = 1000
# Progress is written at most this often (cancel is read every step).
REPORT_SECONDS = 1.0
HYPERPARAMETERS = TrainingJob.HYPERPARAMETERS


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

    @classmethod
    def of(cls, job: TrainingJob) -> "Params":
        return cls(**{name: getattr(job, name) for name in HYPERPARAMETERS if name != "method"})

    @property
    def log_every(self) -> int:
        return max(1, self.steps // HISTORY_POINTS)


@dataclass
class Outcome:
    unet: object
    step: int
    stopped: str  # "done" (reached `until`), "cancel" or "pause"
    resumed_from: int
    losses: list = field(default_factory=list)
    seconds: float = 0.0


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
        listing.append({"id": image.pk, "png_sha256": image.png_sha256, "source_sha256": image.source_sha256})
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


# --- The model -----------------------------------------------------------------------


def unet_build(*, resolution: int, width: int, seed: int) -> diffusers.UNet2DModel:
    """A grey DDPM UNet from scratch: four levels (three halvings), attention at the third."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.UNet2DModel(
            sample_size=resolution,
            in_channels=1,
            out_channels=1,
            layers_per_block=2,
            block_out_channels=(width, width * 2, width * 2, width * 4),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )


def noise_scheduler() -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def training_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- Checkpoints ---------------------------------------------------------------------


def checkpoint_save(folder: Path, *, unet, optimizer, generator, step: int, state: dict) -> Path:
    """Write step-<n>/ (weights.safetensors, state.pt) via a temporary folder and one rename.

    A worker killed mid-write leaves a temporary folder, never a half checkpoint; the
    older checkpoints are removed only once the new one is in place.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:09d}"
    temporary = folder / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in unet.state_dict().items()}
    save_file(weights, temporary / "weights.safetensors")
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    everything = {"optimizer": optimizer.state_dict(), "rng": rng, "step": step, **state}
    torch.save(everything, temporary / "state.pt")
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


def checkpoint_load(path: Path, *, unet, optimizer, generator) -> dict:
    unet.load_state_dict(load_file(path / "weights.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    rng = state.pop("rng")
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


# --- The loop ------------------------------------------------------------------------


def training_loop(*, params: Params, images: torch.Tensor, folder: Path, until: int, on_step=None) -> Outcome:
    """Train from the latest checkpoint in `folder` (or from scratch) up to step `until`.

    `on_step(step, losses)` is called after every step and answers "go", "cancel" (stop;
    the last checkpoint stays) or "pause" (checkpoint now and stop, to be resumed).
    """
    device = training_device()
    unet = unet_build(resolution=params.resolution, width=params.width, seed=params.seed).to(device)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=params.learning_rate)
    generator = torch.Generator().manual_seed(params.seed)
    state = {"losses": [], "pending": [], "seconds": 0.0}
    step = 0
    if latest := checkpoint_latest(folder):
        state = checkpoint_load(latest, unet=unet, optimizer=optimizer, generator=generator)
        step = state.pop("step")
    resumed_from = step
    scheduler = noise_scheduler()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=params.mixed_precision == "bf16")
    started = time.perf_counter()

    def save():
        elapsed = {"seconds": state["seconds"] + time.perf_counter() - started}
        checkpoint_save(
            folder, unet=unet, optimizer=optimizer, generator=generator, step=step, state={**state, **elapsed}
        )

    while step < until:
        chosen = batch_indices(seed=params.seed, step=step, batch_size=params.batch_size, count=len(images))
        clean = images[chosen].to(device).float() / 127.5 - 1.0
        # Drawn on the CPU generator whatever the device: the same numbers everywhere.
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(clean),), generator=generator).to(device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with autocast:
            predicted = unet(noisy, timesteps).sample
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        state["pending"].append(loss.detach().float().cpu())
        if step % params.log_every == 0 or step == params.steps:
            state["losses"].append([step, float(torch.stack(state["pending"]).mean())])
            state["pending"] = []
        if step % params.checkpoint_every == 0:
            save()
        answer = on_step(step, state["losses"]) if on_step else "go"
        if answer == "cancel":
            return Outcome(unet, step, "cancel", resumed_from, state["losses"])
        if answer == "pause" and step < until:
            if step % params.checkpoint_every:
                save()
            return Outcome(unet, step, "pause", resumed_from, state["losses"])
    seconds = state["seconds"] + time.perf_counter() - started
    return Outcome(unet, step, "done", resumed_from, state["losses"], seconds)


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
    job = TrainingJob.objects.get(pk=job_id)
    params = Params.of(job)
    try:
        images, listing = training_images(image_sets=job.image_sets.all(), resolution=job.resolution)
        outcome = training_loop(
            params=params,
            images=images,
            folder=job_folder(job),
            until=job.steps,
            on_step=_reporter(job_id, attempt),
        )
        _report(job_id, attempt, outcome.step, outcome.losses)
        if outcome.stopped == "done":
            _finish(job, outcome, listing)
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


def _report(job_id: int, attempt: int, step: int, losses: list) -> None:
    TrainingJob.objects.filter(pk=job_id, attempt=attempt).update(
        step=step, loss_history=losses, heartbeat=timezone.now()
    )


def _fail(job_id: int, attempt: int, message: str) -> None:
    TrainingJob.objects.filter(pk=job_id, attempt=attempt, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.FAILED, error=message[:4000], finished=timezone.now()
    )


def _finish(job: TrainingJob, outcome: Outcome, listing: list[dict]) -> None:
    """Save the pipeline under MODELS_ROOT, register it and record how it was made."""
    folder = Path(settings.MODELS_ROOT) / f"trained-{job.pk}"
    temporary = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    pipeline = diffusers.DDPMPipeline(unet=outcome.unet.to("cpu").eval(), scheduler=noise_scheduler())
    pipeline.save_pretrained(temporary, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier delivery that died before registering
    os.replace(temporary, folder)
    record = {
        "base": None,
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
    with transaction.atomic():
        model = model_register(
            name=job.name,
            path=str(folder),
            description=f"Trained by training job {job.pk} ({job.method}, {job.steps} steps).",
            scheduler="ddim",  # 50 DDIM steps draw what 1000 DDPM steps would, twenty times faster
            steps=50,
        )
        TrainingJob.objects.filter(pk=job.pk, attempt=job.attempt, status=Status.RUNNING).update(
            status=Status.DONE, model=model, record=_plain(record), finished=timezone.now()
        )
    # The checkpoints served their purpose: the registered folder holds the result.
    shutil.rmtree(job_folder(job), ignore_errors=True)


def _plain(value):
    """JSON-ready: the UNet's config holds tuples."""
    return json.loads(json.dumps(value, default=str))
