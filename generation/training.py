"""Training on a worker: the loop (every method), exact checkpoints, previews, the registered result.

Imported only inside a worker's child process (the `train` task imports it there): it
imports torch, which must never be initialised in the prefork parent or the web process.
What each method trains and how is in generation/training_methods.py.

Resuming is exact: the trained weights, the optimizer, the EMA, the loss scaler, the noise
generator and the step are in each checkpoint, and the data order is a function of
(seed, step) alone, so a run stopped at any checkpoint and resumed ends with the same
weights as one never stopped. Previews run with torch's random state set aside.

Checkpoints, previews and the trained model go to the storage (config/storage.py), the base
model comes from this host's model cache (generation/model_cache.py): a job resumed by the
sweep or a retry continues on whichever host takes it up, from nothing but the database
and the storage.
"""

import io
import json
import re
import secrets
import tempfile
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
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from config.storage import local_copies, storage_delete_tree
from studies.imaging.normalise import normalise
from studies.models import Image

from .model_cache import model_folders
from .models import TrainingJob
from .services import model_register
from .store import file_sha256
from .training_jobs import TRAINING, training_prompt
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
    base_path: str = ""  # lora and full: the base's local pipeline folder (its checkout)

    @classmethod
    def of(cls, job: TrainingJob, *, base_path: str = "") -> "Params":
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
# In the storage under training/<job>/: step-<n>-<token>/ holds weights.safetensors and
# state.pt, then complete.json (their sha256) written last. Object storage has no rename
# of folders: a checkpoint without complete.json (its writer died) is never taken, and each
# write has its own token, so two deliveries of a task never write into one folder.

WEIGHTS, STATE, COMPLETE = "weights.safetensors", "state.pt", "complete.json"
CHECKPOINT = re.compile(r"step-(\d{9})-[0-9a-f]+")


class CheckpointDamaged(Exception):
    """A stored checkpoint whose files do not match the hashes written with it."""


def checkpoint_step(name: str) -> int:
    """The step of a checkpoint, from its name."""
    return int(CHECKPOINT.fullmatch(name.rsplit("/", 1)[-1]).group(1))


def _checkpoints(prefix: str) -> list[str]:
    try:
        folders, _ = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(f"{prefix}/{folder}" for folder in folders if CHECKPOINT.fullmatch(folder))


def checkpoint_save(prefix: str, *, weights: dict, state: dict, step: int) -> str:
    """Store a checkpoint (written locally first, then copied); the older ones go once it is whole."""
    name = f"{prefix}/step-{step:09d}-{secrets.token_hex(4)}"
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    hashes = {}
    with tempfile.TemporaryDirectory(prefix="readerstudy-checkpoint-") as local:
        save_file(weights, Path(local) / WEIGHTS)
        torch.save({**state, "rng": rng, "step": step}, Path(local) / STATE)
        for file in (WEIGHTS, STATE):
            hashes[file] = file_sha256(Path(local) / file)
            with open(Path(local) / file, "rb") as f:
                default_storage.save(f"{name}/{file}", File(f, name=file))
    default_storage.save(f"{name}/{COMPLETE}", ContentFile(json.dumps({"step": step, "sha256": hashes})))
    for other in _checkpoints(prefix):
        if other != name and checkpoint_step(other) <= step:
            storage_delete_tree(default_storage, other)
    return name


def checkpoint_latest(prefix: str) -> str | None:
    """The latest whole checkpoint under `prefix` in the storage, by name; None if none."""
    for name in reversed(_checkpoints(prefix)):
        if default_storage.exists(f"{name}/{COMPLETE}"):
            return name
    return None


def checkpoint_load(name: str) -> tuple[dict, dict]:
    """The weights and the state of a stored checkpoint, checked by hash; torch's random state
    is restored here."""
    with default_storage.open(f"{name}/{COMPLETE}", "rb") as f:
        expected = json.loads(f.read())["sha256"]
    files = [f"{name}/{WEIGHTS}", f"{name}/{STATE}"]
    with local_copies(default_storage, files) as paths:
        for file, path in paths.items():
            if file_sha256(path) != expected[file.rsplit("/", 1)[-1]]:
                raise CheckpointDamaged(f"the checkpoint file {file} does not match its hash: it is damaged")
        state = torch.load(paths[files[1]], weights_only=True, map_location="cpu")
        weights = load_file(paths[files[0]])
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return weights, state


def checkpoints_remove(prefix: str) -> None:
    """Delete a finished job's checkpoints, whole or not; its previews stay."""
    try:
        folders, _ = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return
    for folder in folders:
        if folder.startswith("step-"):
            storage_delete_tree(default_storage, f"{prefix}/{folder}")


# --- The loop ------------------------------------------------------------------------


def training_loop(*, params: Params, images: torch.Tensor, checkpoints: str, until: int, on_step=None,
                  prompts: list[str] | None = None, on_preview=None,
                  preview_guidance: float = 7.5) -> Outcome:  # fmt: skip
    """Train from the latest checkpoint under `checkpoints` (a folder in the storage) or from
    scratch, up to step `until`.

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
    if latest := checkpoint_latest(checkpoints):
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
        checkpoint_save(checkpoints, weights=trainee.weights(), state=everything, step=step)

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


def job_folder(job: TrainingJob) -> str:
    """Where the job's checkpoints and previews are in the storage."""
    return f"{TRAINING}/{job.pk}"


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
    checkouts = []
    try:
        base_folder = ""
        if job.base_id:
            checkouts, base_folder, _ = model_folders(job.base)  # the base, from this host's cache
        params = Params.of(job, base_path=base_folder)
        images, listing = training_images(image_sets=job.image_sets.all(), resolution=job.resolution)
        prompts = None
        if job.base_id:
            prompts = [training_prompt(job.prompt_template, item["finding"]) for item in listing]
        outcome = training_loop(
            params=params,
            images=images,
            checkpoints=job_folder(job),
            until=job.steps,
            on_step=_reporter(job_id, attempt),
            prompts=prompts,
            on_preview=_previewer(job_id, attempt),
            preview_guidance=job.base.current_version.guidance if job.base_id else 0.0,
        )
        _report(job_id, attempt, outcome.step, outcome.losses)
        if outcome.stopped == "done":
            _finish(job, outcome, listing, prompts, base_folder)
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
    finally:
        for checkout in checkouts:
            checkout.release()


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
    """The loop's on_preview: the grid stored as training/<job>/previews/step-<n>.png, listed on the job.

    A step previewed again (resumed from an earlier checkpoint) replaces its file and its entry.
    """

    def on_preview(step: int, picture: PILImage.Image) -> None:
        relative = f"{job_id}/previews/step-{step}.png"
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        name = f"{TRAINING}/{relative}"
        default_storage.delete(name)  # quiet if absent; a folder storage never overwrites
        default_storage.save(name, ContentFile(buffer.getvalue()))
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


def _finish(job: TrainingJob, outcome: Outcome, listing: list[dict], prompts: list[str] | None,
            base_folder: str) -> None:  # fmt: skip
    """Register what was trained (stored like any model) and record how it was made."""
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
    # Written on this host's temporary disk only to be stored (content-addressed) by registering.
    with tempfile.TemporaryDirectory(prefix="readerstudy-trained-") as folder:
        outcome.trainee.save(Path(folder))
        with transaction.atomic():
            model = model_register(
                name=job.name,
                description=f"Trained by training job {job.pk} ({job.method}, {job.steps} steps).",
                **_registration(job, Path(folder), version, prompts, base_folder),
            )
            TrainingJob.objects.filter(pk=job.pk, attempt=job.attempt, status=Status.RUNNING).update(
                status=Status.DONE, model=model, record=_plain(record), finished=timezone.now()
            )
    # The checkpoints served their purpose: the stored model holds the result.
    checkpoints_remove(job_folder(job))


def _registration(job: TrainingJob, folder: Path, version, prompts: list[str] | None,
                  base_folder: str) -> dict:  # fmt: skip
    """model_register's arguments: where the weights are, and the first version's settings.

    The registry names the job as where the weights came from (the local folder is
    temporary). A LoRA adapter is registered with its base's stored pipeline (the same
    files: nothing new is stored). A fine-tune generates as its base did (scheduler,
    steps, guidance, negative prompt, dtype, batch), at the resolution it was trained at,
    with the prompts it learned.
    """
    made_by = f"training job {job.pk}"
    if version is None:
        # 50 DDIM steps draw what 1000 DDPM steps would, twenty times faster.
        return {"path": str(folder), "path_label": made_by, "scheduler": "ddim", "steps": 50}
    carried = ["scheduler", "steps", "guidance", "negative_prompt", "dtype", "batch_size"]
    settings = {name: getattr(version, name) for name in carried}
    settings |= {"size": job.resolution, "prompts": list(Counter(prompts).keys())}
    if job.method == TrainingJob.Method.LORA:
        return {
            "path": base_folder, "path_label": job.base.path, "lora_path": str(folder), "lora_label": made_by,
            **settings,
        }  # fmt: skip
    return {"path": str(folder), "path_label": made_by, **settings}


def _base_record(version) -> dict | None:
    if version is None:
        return None
    model = version.model
    return {
        "name": model.name,
        "version": version.number,
        "path": model.path,
        "digest": model.digest,
        "pipeline_class": model.pipeline_class,
        "settings": version.settings_dict(),
    }


def _plain(value):
    """JSON-ready: the UNet's config holds tuples."""
    return json.loads(json.dumps(value, default=str))
