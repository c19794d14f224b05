"""Training jobs, web side: launch (every check before any GPU time), cancel, progress.

The worker side is generation/training.py; this module imports no torch: what it needs to
know about a base model it reads from the model's config files, as generation/registry.py does.
"""

import json
import math
import shutil
import string
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from analysis.cells import formula_refusal

from .models import GenerativeModel, TrainingJob
from .store import ModelUnavailable, folder_files, manifest_read, manifest_sizes, stored_json
from .tasks import train

Status = TrainingJob.Status
Method = TrainingJob.Method
# The pipeline classes each fine-tuning method can start from.
FINE_TUNABLE = {"StableDiffusionPipeline"}
METHOD_NAMES = {Method.LORA: "LoRA fine-tuning", Method.FULL: "full fine-tuning"}
# The unconditional UNet has about this many parameters times its width squared (measured:
# 4,266 at width 8, 4,198 at 128); float32 weights.
UNCONDITIONAL_PARAMETERS_PER_WIDTH2 = 4_300
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Checkpoints and previews of job <pk> are in the storage under training/<pk>/ (generation/training.py).
TRAINING = "training"


class TrainingRefused(Exception):
    """A training job that cannot run, with the reason for the researcher."""


def training_prompt(template: str, finding: str) -> str:
    """An image's prompt: its finding through the template. Without a finding, the template
    with the field left empty and the commas around it tidied ("chest x-ray, " -> "chest x-ray")."""
    finding = " ".join(finding.split())
    prompt = template.format(finding=finding)
    if not finding:
        prompt = ", ".join(part.strip() for part in prompt.split(",") if part.strip())
    return " ".join(prompt.split())


def training_refusal(*, name: str, image_sets, method: str, steps: int, batch_size: int,
                     learning_rate: float, resolution: int, width: int, checkpoint_every: int,
                     mixed_precision: str, base: GenerativeModel | None = None, ema: bool = False,
                     snr_gamma: float | None = None, rank: int = 4,
                     prompt_template: str = "chest x-ray, {finding}", train_text_encoder: bool = False,
                     preview_every: int = 0) -> str:  # fmt: skip
    """Why this job cannot run (empty if it can): everything a worker would trip on later."""
    if method not in Method.values:
        return f"unknown method {method!r}; choose one of {', '.join(Method.values)}"
    if not name.strip():
        return "the new model needs a name"
    if problem := formula_refusal(name, "a model's name"):
        return problem
    if GenerativeModel.objects.filter(name=name).exists():
        return f"a model named {name!r} is already registered; choose another name"
    if TrainingJob.objects.filter(name=name, status__in=[Status.QUEUED, Status.RUNNING]).exists():
        return f"a model named {name!r} is already being trained"
    if steps < 1:
        return f"steps must be at least 1 (got {steps})"
    if not 1 <= batch_size <= 1024:
        return f"the batch must be between 1 and 1024 images (got {batch_size})"
    if not (math.isfinite(learning_rate) and 0 < learning_rate < 1):
        return f"the learning rate must be above 0 and below 1 (got {learning_rate})"
    if not 16 <= resolution <= 1024 or resolution % 8:
        return f"the resolution must be a multiple of 8 between 16 and 1024 pixels (got {resolution})"
    if not 8 <= width <= 512 or width % 8:
        return f"the UNet's width must be a multiple of 8 between 8 and 512 (got {width})"
    if checkpoint_every < 1:
        return f"checkpoints must come every 1 step or more (got {checkpoint_every})"
    if mixed_precision not in TrainingJob.MixedPrecision.values:
        return f"mixed precision must be one of {', '.join(TrainingJob.MixedPrecision.values)}"
    if snr_gamma is not None and not (math.isfinite(snr_gamma) and snr_gamma > 0):
        return f"the Min-SNR gamma must be above 0 (5 is usual), or left out for plain MSE (got {snr_gamma})"
    if preview_every < 0:
        return f"previews come every 0 (none) or more steps (got {preview_every})"
    if train_text_encoder and method != Method.FULL:
        return "only full fine-tuning trains the text encoder; LoRA and unconditional training leave it out"
    if method == Method.UNCONDITIONAL:
        if base is not None:
            return f"the unconditional method trains a UNet from scratch: leave the base ({base.name}) out"
        trained = UNCONDITIONAL_PARAMETERS_PER_WIDTH2 * width**2 * 4
        problem = _disk_refusal(trained_bytes=trained, output_bytes=trained, ema=ema)
    else:
        problem = _fine_tune_refusal(
            method=method, base=base, resolution=resolution, rank=rank, prompt_template=prompt_template,
            train_text_encoder=train_text_encoder, ema=ema,
        )  # fmt: skip
    return problem or _images_refusal(image_sets, batch_size)


def _fine_tune_refusal(*, method: str, base, resolution: int, rank: int, prompt_template: str,
                       train_text_encoder: bool, ema: bool) -> str:  # fmt: skip
    what = METHOD_NAMES[method]
    if base is None:
        return f"{what} needs a base: a registered text-to-image model to start from"
    if base.pipeline_class not in FINE_TUNABLE:
        return (
            f"{what} is supported for {', '.join(sorted(FINE_TUNABLE))} bases only; "
            f"{base.name!r} is a {base.pipeline_class}"
        )
    if base.has_lora:
        return f"{base.name!r} carries a LoRA adapter; fine-tune the model it adapts, without one"
    if not 1 <= rank <= 256:
        return f"the LoRA rank must be between 1 and 256 (got {rank})"
    if problem := _template_refusal(prompt_template):
        return problem
    try:
        read_json, sizes = _base_files(base)
        unet_levels = read_json("unet/config.json")["block_out_channels"]
        vae_levels = read_json("vae/config.json")["block_out_channels"]
        vae_blocks, narrowest = len(vae_levels), min(unet_levels)
    except ModelUnavailable as exc:
        return f"the base's UNet and VAE configs cannot be read from the storage: {exc}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = f"the stored model {base.digest[:12]}" if base.digest else base.path
        return f"the base's UNet and VAE configs cannot be read ({exc!r}); is {where} still there?"
    # The VAE halves the side once per block after the first; so does the UNet.
    factor = 2 ** (vae_blocks - 1) * 2 ** (len(unet_levels) - 1)
    if resolution % factor:
        return (
            f"{base.name!r} takes sides that are multiples of {factor} pixels (its VAE's scale factor "
            f"times its UNet's downsampling); {resolution} is not"
        )
    unet_bytes = _weight_bytes(sizes, "unet")
    if method == Method.LORA:
        # Each adapted projection, at least as wide as the UNet's first level, gains at most
        # 2 x rank / width of its weights: an upper bound on the adapter's size.
        trained = unet_bytes * min(1.0, 2 * rank / narrowest)
        output = trained
    else:
        trained = unet_bytes + (_weight_bytes(sizes, "text_encoder") if train_text_encoder else 0)
        output = sum(_weight_bytes(sizes, component) for component in {p.split("/")[0] for p in sizes})
    return _disk_refusal(trained_bytes=trained, output_bytes=output, ema=ema)


def _base_files(base: GenerativeModel):
    """A reader of the base's JSON files and the sizes of its files by relative path: from the
    storage (the manifest and the configs only, no weights fetched), or from the folder of a
    model registered before models were stored."""
    if base.digest:
        return partial(stored_json, base.digest), manifest_sizes(manifest_read(base.digest))
    folder = Path(base.path)
    sizes = {name: path.stat().st_size for name, path in folder_files(folder).items()}
    return (lambda relative: json.loads((folder / relative).read_text())), sizes


def _template_refusal(template: str) -> str:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"the prompt template {template!r} does not format ({exc}); write {{finding}} where it goes"
    if others := [name for name in fields if name != "finding"]:
        return (
            f"the prompt template may hold only the field {{finding}}; it holds {{{others[0]}}} "
            "(double a brace to write it: {{ or }})"
        )
    return ""


def _weight_bytes(sizes: dict[str, int], component: str) -> int:
    """The bytes of a component's weight files (not of its subfolders)."""
    return sum(
        size
        for name, size in sizes.items()
        if name.count("/") == 1 and name.startswith(f"{component}/") and name.endswith(WEIGHT_SUFFIXES)
    )


def _disk_refusal(*, trained_bytes: float, output_bytes: float, ema: bool) -> str:
    """Checkpoints hold the trained weights and AdamW's two moments (3x; 4x with an EMA), two of
    them at once while a new one replaces the old; then the result is stored.

    All of it goes to the storage: on a folder (MEDIA_ROOT), its free disk is checked here;
    object storage reports no free space, and a bucket rarely runs out.
    """
    if not isinstance(default_storage, FileSystemStorage):
        return ""
    needed = int(2 * (4 if ema else 3) * trained_bytes + output_bytes)
    root = Path(default_storage.location)
    while not root.exists() and root != root.parent:
        root = root.parent
    free = shutil.disk_usage(root).free
    if needed > free:
        return (
            f"too little free disk for the checkpoints: about {needed / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB free in the storage ({default_storage.location})"
        )
    return ""


def _images_refusal(image_sets, batch_size: int) -> str:
    if not image_sets:
        return "choose at least one image set to train on"
    counts = {image_set.name: image_set.images.count() for image_set in image_sets}
    if empty := [name for name, count in counts.items() if not count]:
        return f"image set {empty[0]!r} has no images"
    if sum(counts.values()) < batch_size:
        held = ", ".join(f"{name!r}: {count}" for name, count in counts.items())
        return f"the batch of {batch_size} needs at least as many images; the sets hold {held}"
    return ""


@transaction.atomic
def training_launch(*, name: str, image_sets, method: str = Method.UNCONDITIONAL, steps: int,
                    batch_size: int, learning_rate: float, resolution: int, seed: int = 0,
                    width: int = 32, checkpoint_every: int = 500,
                    mixed_precision: str = TrainingJob.MixedPrecision.NO, base: GenerativeModel | None = None,
                    ema: bool = False, snr_gamma: float | None = None, rank: int = 4,
                    prompt_template: str = "chest x-ray, {finding}", train_text_encoder: bool = False,
                    preview_every: int = 0) -> TrainingJob:  # fmt: skip
    """Check everything, create the job and queue its task on the `gpu` queue (after commit)."""
    options = dict(
        method=method, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        resolution=resolution, width=width, checkpoint_every=checkpoint_every,
        mixed_precision=mixed_precision, base=base, ema=ema, snr_gamma=snr_gamma, rank=rank,
        prompt_template=prompt_template, train_text_encoder=train_text_encoder, preview_every=preview_every,
    )  # fmt: skip
    image_sets = list(image_sets)
    if problem := training_refusal(name=name, image_sets=image_sets, **options):
        raise TrainingRefused(problem)
    job = TrainingJob.objects.create(name=name, seed=seed, **options)
    job.image_sets.set(image_sets)
    train.delay_on_commit(job.pk)
    return job


def training_cancel(*, job: TrainingJob) -> bool:
    """Stop a queued or running job; the worker stops before its next step."""
    return bool(
        TrainingJob.objects.filter(pk=job.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
            status=Status.CANCELLED, finished=timezone.now()
        )
    )


def training_retry(*, job: TrainingJob) -> bool:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint.

    The attempt goes up, so a task of the earlier attempt still on its way stands down.
    """
    with transaction.atomic():
        retried = TrainingJob.objects.filter(pk=job.pk, status__in=[Status.FAILED, Status.CANCELLED]).update(
            status=Status.QUEUED, attempt=F("attempt") + 1, error="", finished=None
        )
        if retried:
            job.refresh_from_db()
            train.delay_on_commit(job.pk, job.attempt)
    return bool(retried)


# The sweep resumes a silent job this many times; then it fails it (a job that kills its worker).
MAX_RESUMES = 3


def training_sweep() -> int:
    """Resume running jobs that no worker has touched for longer than any task may run, and
    send again the task of queued jobs that the broker lost.

    A worker killed with its task (out of memory, a lost host) leaves the job 'running';
    the broker may hand the task on only much later, or never (the embedded broker).
    The sweep queues it again under a new attempt, resuming from its last checkpoint,
    at most MAX_RESUMES times. Run by Celery beat (config/celery.py), never by a page.
    """
    silence = settings.TRAINING_SILENCE_SECONDS
    limit = timezone.now() - timedelta(seconds=silence)
    swept = 0
    for job in TrainingJob.objects.filter(status=Status.RUNNING, heartbeat__lt=limit):
        stale = TrainingJob.objects.filter(
            pk=job.pk, attempt=job.attempt, status=Status.RUNNING, heartbeat__lt=limit
        )
        if job.resumes >= MAX_RESUMES:
            swept += stale.update(
                status=Status.FAILED,
                finished=timezone.now(),
                error=f"No worker has worked on this job for over {silence} s, {job.resumes + 1} times; "
                "it may kill its worker (out of memory?). Retry resumes it from its last checkpoint.",
            )
            continue
        with transaction.atomic():
            resumed = stale.update(
                status=Status.QUEUED,
                attempt=F("attempt") + 1,
                resumes=F("resumes") + 1,
                heartbeat=timezone.now(),
            )
            if resumed:
                swept += 1
                train.delay_on_commit(job.pk, job.attempt + 1)
    return swept + _lost_queued_sweep(limit)


def _lost_queued_sweep(limit) -> int:
    """Send again the task of queued jobs that the broker lost (a restart that kept nothing).

    A queued job that has waited the silence period while no task waits in the `gpu` queue
    has no task anywhere: it would stay queued for ever. Its task goes again, under a new
    attempt (a late copy of the lost one stands down).
    """
    from .jobs import waiting_tasks  # the same reading of the queue as generation's sweep

    waiting = TrainingJob.objects.annotate(since=Coalesce("heartbeat", "created")).filter(
        status=Status.QUEUED, since__lt=limit
    )
    if not waiting.exists() or waiting_tasks() != 0:
        return 0
    sent = 0
    for job in waiting:
        with transaction.atomic():
            sent_again = waiting.filter(pk=job.pk, attempt=job.attempt)
            if sent_again.update(attempt=F("attempt") + 1, heartbeat=timezone.now()):
                sent += 1
                train.delay_on_commit(job.pk, job.attempt + 1)
    return sent


# The smoothed loss is the mean of this many of the latest points of the history.
SMOOTHING = 20


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total: int
    loss: float | None
    per_second: float | None
    seconds_left: float | None
    images_per_second: float | None = None
    smoothed_loss: float | None = None


def training_progress(job: TrainingJob) -> TrainingProgress:
    """Step of N, the latest loss (a mean over its interval) and a smoothed one, steps/s and
    images/s (steps/s times the batch), and time left."""
    recent = [loss for _, loss in job.loss_history[-SMOOTHING:]]
    loss = recent[-1] if recent else None
    smoothed = sum(recent) / len(recent) if recent else None
    per_second = seconds_left = images_per_second = None
    if job.started and job.step:
        elapsed = ((job.finished or job.heartbeat or timezone.now()) - job.started).total_seconds()
        if elapsed > 0:
            per_second = job.step / elapsed
            images_per_second = per_second * job.batch_size
            if job.status in (Status.QUEUED, Status.RUNNING):
                seconds_left = (job.steps - job.step) / per_second
    return TrainingProgress(job.step, job.steps, loss, per_second, seconds_left, images_per_second, smoothed)
