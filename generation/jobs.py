"""Generation jobs: split into chunk tasks on the `gpu` queue, run idempotently, survived.

A job's images are seeds base_seed .. base_seed + count - 1 of one model version.
Each chunk task makes the seeds of its chunk that have no image yet, so a chunk
delivered twice, or a job retried, never duplicates or loses an image; the
database's uniqueness on (version, seed) settles any race.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from studies.images import files_delete, image_build
from studies.imaging.decode import Decoded
from studies.models import Image

from .models import GeneratedImage, GenerationJob, ModelVersion
from .pipelines import PROMPT_LENGTH_SENSITIVE
from .signals import job_done

logger = logging.getLogger(__name__)
Status = GenerationJob.Status
# Seeds of remade outputs: far from any seed a job would ask for.
REMAKE_OFFSET = 2**40
MAX_REMAKES = 3


def next_free_seed(version: ModelVersion) -> int:
    """After every image made and every seed a job has asked for, queued ones included."""
    top_image = version.images.aggregate(top=Max("seed"))["top"]
    top_job = version.jobs.aggregate(top=Max(F("base_seed") + F("count")))["top"]
    return max(0 if top_image is None else top_image + 1, top_job or 0)


def missing_seeds(version: ModelVersion, seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        return []
    made = set(
        GeneratedImage.objects.filter(
            version=version, seed__gte=min(seeds), seed__lte=max(seeds)
        ).values_list("seed", flat=True)
    )
    return [seed for seed in seeds if seed not in made]


@transaction.atomic
def job_launch(*, version: ModelVersion, count: int, base_seed: int | None = None, is_preview=False):
    """Create a job and queue one task per batch of its missing seeds (after commit)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    # Lock the version: two launches at once must not both take the next free seeds.
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if base_seed is None:
        base_seed = next_free_seed(version)
    job = GenerationJob.objects.create(
        version=version, count=count, base_seed=base_seed, is_preview=is_preview
    )
    _enqueue_missing(job)
    return job


def _enqueue_missing(job: GenerationJob) -> None:
    from .tasks import generate_chunk

    missing = missing_seeds(job.version, job.seeds)
    if not missing:
        _mark_done(job.pk)
        return
    size = job.version.batch_size
    for group in _prompt_groups(job.version, missing):
        for start in range(0, len(group), size):
            generate_chunk.delay_on_commit(job.pk, group[start : start + size], job.attempt)


def _prompt_groups(version: ModelVersion, seeds: list[int]) -> list[list[int]]:
    """The seeds in groups that a pipeline can make in one call.

    A pipeline whose text context depends on the batch's longest prompt makes one
    call per prompt: its chunks hold seeds of one prompt, or a chunk of n seeds
    cycling through the prompts would be n calls of one image each.
    """
    if version.model.pipeline_class not in PROMPT_LENGTH_SENSITIVE or len(version.prompts) < 2:
        return [seeds]
    groups: dict[str, list[int]] = {}
    for seed in seeds:
        groups.setdefault(prompt_for(version, seed), []).append(seed)
    return list(groups.values())


def job_cancel(*, job: GenerationJob) -> bool:
    """Stop a queued or running job; chunks check before each batch."""
    return bool(
        GenerationJob.objects.filter(pk=job.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
            status=Status.CANCELLED, finished=timezone.now()
        )
    )


@transaction.atomic
def job_retry(*, job: GenerationJob) -> bool:
    """Run a failed or cancelled job again: only its missing images are made.

    The attempt number goes up, so tasks of the earlier attempt still in the queue
    stand down instead of making the same images a second time.
    """
    updated = GenerationJob.objects.filter(pk=job.pk, status__in=[Status.FAILED, Status.CANCELLED]).update(
        status=Status.QUEUED, error="", finished=None, attempt=F("attempt") + 1, deliveries={}, heartbeat=None
    )
    if updated:
        job.refresh_from_db()
        _enqueue_missing(job)
    return bool(updated)


def _fail(job_id: int, message: str) -> None:
    GenerationJob.objects.filter(pk=job_id, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.FAILED, error=message[:4000], finished=timezone.now()
    )


def _finish_if_complete(job: GenerationJob) -> None:
    if job.images().count() >= job.count:
        _mark_done(job.pk)


def _mark_done(job_id: int) -> None:
    """Mark a queued or running job done and, once it is committed, say so (`job_done`).

    Only the update that changes the row announces it, so the last two chunks of a
    job finishing together announce it once.
    """
    if GenerationJob.objects.filter(pk=job_id, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.DONE, finished=timezone.now()
    ):
        transaction.on_commit(lambda: _announce_done(job_id))


def _announce_done(job_id: int) -> None:
    # A receiver that fails (the broker away) must not fail the chunk that made the
    # images; what it would have started is picked up by the beat schedule instead.
    job = GenerationJob.objects.get(pk=job_id)
    for receiver, result in job_done.send_robust(sender=GenerationJob, job=job):
        if isinstance(result, Exception):
            logger.error("%s failed after job %s was done", receiver, job_id, exc_info=result)


def _still_wanted(job_id: int, attempt: int) -> bool:
    return GenerationJob.objects.filter(
        pk=job_id, attempt=attempt, status__in=[Status.QUEUED, Status.RUNNING]
    ).exists()


def _beat(job_id: int) -> None:
    GenerationJob.objects.filter(pk=job_id).update(heartbeat=timezone.now())


def jobs_sweep() -> int:
    """Fail running jobs that no worker has touched for longer than any task may run.

    A chunk can vanish without a word: killed at the hard time limit, or lost with
    a killed worker on the embedded filesystem broker (which has no redelivery).
    Such a job would show 'running' forever; failed, it can be retried, which makes
    only its missing images. Run by Celery beat (config/celery.py), never by a page.
    """
    limit = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    stale = GenerationJob.objects.filter(status=Status.RUNNING, heartbeat__lt=limit)
    failed = 0
    for job in stale:
        missing = job.count - job.images().count()
        failed += GenerationJob.objects.filter(pk=job.pk, status=Status.RUNNING, heartbeat__lt=limit).update(
            status=Status.FAILED,
            finished=timezone.now(),
            error=f"No worker has worked on this job for over {settings.CELERY_TASK_TIME_LIMIT + 60} s "
            f"and {missing} image(s) are missing (a task hit the hard time limit or died with its worker). "
            "Retry it to make them.",
        )
    return failed


def _count_delivery(job_id: int, first_seed: int) -> int:
    """How many times this chunk has reached a worker, this one included."""
    with transaction.atomic():
        job = GenerationJob.objects.select_for_update().get(pk=job_id)
        deliveries = dict(job.deliveries)
        deliveries[str(first_seed)] = deliveries.get(str(first_seed), 0) + 1
        GenerationJob.objects.filter(pk=job_id).update(deliveries=deliveries)
        return deliveries[str(first_seed)]


def prompt_for(version: ModelVersion, seed: int) -> str:
    """Text models cycle through their prompts by seed, so a job spreads its images evenly."""
    return version.prompts[seed % len(version.prompts)] if version.prompts else ""


# A chunk that has killed its worker this many times is not handed out again.
MAX_DELIVERIES = 3


def chunk_run(*, job_id: int, seeds: list[int], attempt: int = 1) -> None:
    """Make the images of these seeds that do not exist yet. Safe to run twice."""
    from . import pipelines

    try:
        job = GenerationJob.objects.select_related("version__model").get(pk=job_id)
        if not _still_wanted(job_id, attempt):
            return  # cancelled, failed, done, or a task of an earlier attempt
        if _count_delivery(job_id, seeds[0]) > MAX_DELIVERIES:
            _fail(
                job_id,
                f"The chunk from seed {seeds[0]} ended its worker {MAX_DELIVERIES} times "
                "(out of host memory, or a crash in the GPU stack?); see the worker's log.",
            )
            return
        now = timezone.now()
        GenerationJob.objects.filter(pk=job_id, status=Status.QUEUED).update(status=Status.RUNNING)
        GenerationJob.objects.filter(pk=job_id, started__isnull=True).update(started=now)
        _beat(job_id)
        version = job.version
        todo = missing_seeds(version, seeds)
        loaded = pipelines.pipeline_for(version) if todo else None
        batch = len(todo)
        while todo:
            if not _still_wanted(job_id, attempt):
                return
            part = todo[:batch]
            try:
                made, problem = _make(loaded, version, part)
            except pipelines.OutOfMemory:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)  # halve and try again, down to one image
                continue
            _record_all(job, version, made, loaded)  # the good images of a batch are kept
            _beat(job_id)
            if problem:
                raise RuntimeError(problem)
            todo = todo[len(part) :]
    except SoftTimeLimitExceeded:
        _fail(job_id, f"A chunk ran past the time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT} s).")
        return
    except Exception as exc:
        _fail(job_id, f"Generation failed on seeds {seeds[0]}..{seeds[-1]}: {type(exc).__name__}: {exc}")
        raise
    _finish_if_complete(job)


@dataclass
class Made:
    seed: int
    used_seed: int
    prompt: str
    grey: object
    shape: tuple
    seconds: float
    remakes: list


def _make(loaded, version: ModelVersion, seeds: list[int]) -> tuple[list[Made], str]:
    """Generate a batch; an output that is not an image is remade with another seed.

    Returns the images made and, if one seed never gave an image, why.
    """
    from . import pipelines

    prompts = [prompt_for(version, seed) for seed in seeds]
    start = time.perf_counter()
    images = pipelines.generate(loaded, version, seeds=seeds, prompts=prompts)
    per_image = (time.perf_counter() - start) / len(seeds)
    made = []
    for seed, prompt, image in zip(seeds, prompts, images, strict=True):
        used, remakes, seconds = seed, [], per_image
        while (problem := _not_an_image(image)) is not None:
            if len(remakes) == MAX_REMAKES:
                return made, f"seed {seed}: {problem} in {MAX_REMAKES + 1} tries"
            remakes.append({"seed": used, "problem": problem})
            used = seed + REMAKE_OFFSET * len(remakes)
            start = time.perf_counter()
            image = pipelines.generate(loaded, version, seeds=[used], prompts=[prompt])[0]
            seconds += time.perf_counter() - start
        made.append(Made(seed, used, prompt, pipelines.to_grey(image), image.shape, seconds, remakes))
    return made, ""


def _not_an_image(image) -> str | None:
    import numpy as np

    if not np.isfinite(image).all():
        return "NaN or infinite values"
    if float(image.max()) < 1 / 255:
        return "all black (a safety checker's blank?)"
    return None


def _record_all(job: GenerationJob, version: ModelVersion, made: list[Made], loaded) -> None:
    """Write the batch's files first, then its rows in one short transaction.

    Normalising and writing files happen outside the transaction (SQLite would hold
    its write lock meanwhile); the files of any row that is not kept are deleted.
    """
    built = [(_build(version, m), m) for m in made]
    kept = set()
    try:
        with transaction.atomic():
            for image, m in built:
                try:
                    with transaction.atomic():  # a savepoint per image
                        image.save()
                        GeneratedImage.objects.create(
                            image=image,
                            version=version,
                            job=job,
                            seed=m.seed,
                            used_seed=m.used_seed,
                            prompt=m.prompt,
                            negative_prompt=version.negative_prompt,
                            seconds=m.seconds,
                            provenance=_provenance(version, m, loaded),
                        )
                    kept.add(id(image))
                except IntegrityError:
                    pass  # another delivery of this chunk recorded this seed first
    except Exception:
        kept.clear()
        raise
    finally:
        for image, _ in built:
            if id(image) not in kept:
                files_delete(image)


def _build(version: ModelVersion, made: Made):
    grey = made.grey.astype("float32")
    height, width = grey.shape
    return image_build(
        decoded=Decoded(
            pixels=grey.clip(0, 1), source_format="generated", width=width, height=height, bit_depth=32
        ),
        origin=Image.Origin.SYNTHETIC,
        size=settings.READER_IMAGE_SIZE,
        source_sha256=hashlib.sha256(grey.tobytes()).hexdigest(),
        source_name=f"{version} seed {made.seed}",
    )


def _provenance(version: ModelVersion, made: Made, loaded) -> dict:
    from . import pipelines

    scheduler = loaded.pipe.scheduler
    return _jsonable(
        {
            **pipelines.describe(loaded),
            "model": version.model.name,
            "version": version.number,
            "pipeline": version.model.pipeline_class,
            "scheduler": type(scheduler).__name__,
            "scheduler_config": dict(scheduler.config),
            "steps": version.steps,
            "guidance": version.guidance,
            "lora_scale": version.lora_scale,
            "output_shape": list(made.shape),
            "remakes": made.remakes,
        }
    )


def _jsonable(value):
    """Plain JSON: PostgreSQL refuses NaN and infinities (DPM-Solver's config has -inf)."""
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)  # "inf", "-inf", "nan"
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return clean(json.loads(json.dumps(value, default=str)))


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    per_second: float | None
    seconds_left: float | None


def job_progress(job: GenerationJob) -> Progress:
    done = job.images().count()
    per_second = seconds_left = None
    made = job.made.count()
    if job.started and made:
        end = job.finished or timezone.now()
        elapsed = (end - job.started).total_seconds()
        if elapsed > 0:
            per_second = made / elapsed
            if job.status in (Status.QUEUED, Status.RUNNING):
                seconds_left = (job.count - done) / per_second
    return Progress(done=done, total=job.count, per_second=per_second, seconds_left=seconds_left)
