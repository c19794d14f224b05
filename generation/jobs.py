"""Generation jobs: split into chunk tasks on the `gpu` queue, run idempotently, survived.

A job's images are seeds base_seed .. base_seed + count - 1 of one model version.
Each chunk task makes the seeds of its chunk that have no image yet, so a chunk
delivered twice, or a job retried, never duplicates or loses an image; the
database's uniqueness on (version, seed) settles any race. Chunks that the broker
loses are sent again by beat's sweep (`jobs_sweep`).
"""

import errno
import hashlib
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.storage import storage_error_text, storage_errors, storage_unreachable
from studies.images import files_delete, image_build
from studies.imaging.decode import Decoded
from studies.models import Image

from .models import GeneratedImage, GenerationJob, ModelVersion
from .operations import queue_lengths
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
        version=version, count=count, base_seed=base_seed, is_preview=is_preview, heartbeat=timezone.now()
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
        status=Status.QUEUED,
        error="",
        finished=None,
        attempt=F("attempt") + 1,
        deliveries={},
        resends=0,
        heartbeat=timezone.now(),
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


def _beat(job_id: int, *, progress: bool = False) -> None:
    """A worker's sign of life on a job: one UPDATE. New images also end a run of resends."""
    fields = {"heartbeat": timezone.now()}
    if progress:
        fields["resends"] = 0
    GenerationJob.objects.filter(pk=job_id).update(**fields)


# A worker working on a job reports at most this often (during a batch: between its steps).
BEAT_SECONDS = 10.0
# The sweep sends a job's missing chunks again this many times in a row without a new
# image; then it fails the job.
MAX_RESENDS = 3
GPU_QUEUE = "gpu"


def _beat_interval() -> float:
    return min(BEAT_SECONDS, settings.GENERATION_SILENCE_SECONDS / 4)


def _beats_every(job_id: int):
    """A function to call as often as convenient (each denoising step): it reports at most
    every BEAT_SECONDS (a quarter of the silence if that is shorter), so a healthy long
    batch is never taken for a lost one."""
    seconds = _beat_interval()
    last = time.monotonic()

    def beat():
        nonlocal last
        if time.monotonic() - last >= seconds:
            _beat(job_id)
            last = time.monotonic()

    return beat


@contextmanager
def _beating(job_id: int, beat=_beat):
    """Report from a thread while the block runs: loading a pipeline (minutes for a large one
    on shared storage) has no steps to report between. A load that hangs is ended by the
    hard time limit, thread and all. `beat(job_id)` reports (a generation job's by default)."""
    stop = threading.Event()

    def run():
        try:
            while not stop.wait(_beat_interval()):
                beat(job_id)
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=run, name=f"beat-job-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def waiting_tasks() -> int | None:
    """Tasks waiting in the `gpu` queue, not yet handed to a worker; None if the broker does not say."""
    return queue_lengths()[GPU_QUEUE]


def silent_jobs(seconds: float):
    """Queued or running jobs with no sign of life (queued, or worked on) for `seconds`."""
    limit = timezone.now() - timedelta(seconds=seconds)
    return GenerationJob.objects.annotate(last_sign=Coalesce("heartbeat", "created")).filter(
        status__in=[Status.QUEUED, Status.RUNNING], last_sign__lt=limit
    )


def jobs_sweep() -> int:
    """Send again the missing chunks of jobs that have lost them; fail a job that keeps losing them.

    A chunk can vanish without a word: a broker that keeps nothing on disk restarted (Redis
    without AOF), a queue purged, a worker killed with its chunk on the filesystem broker (no
    redelivery) or on Redis (redelivered only after the visibility timeout), a chunk killed at
    the hard time limit. Such a job would show 'queued' or 'running' forever.

    Lost, not waiting: a job counts as lost when no worker has touched it (and it was not
    queued) for GENERATION_SILENCE_SECONDS *and* no task waits in the `gpu` queue. Workers
    report every BEAT_SECONDS while they work on a job, between denoising steps too, so a
    healthy long batch is never taken for lost. A job waiting behind others' chunks on a busy
    queue is not lost either: the queue is not empty; if its own chunks were lost meanwhile,
    they are sent once the queue has drained, where they would have been by then anyway.
    The one race left, a worker that took the job's last chunk in the moment between the
    count and the update below and has not reported yet, costs duplicate work, never an
    image twice: chunks are idempotent per seed.

    A resend raises the job's attempt, so that the lost chunks, should the broker hand them
    out after all (a Redis visibility timeout), stand down; a chunk still running under the
    old attempt stops before its next batch. After MAX_RESENDS resends in a row without a new
    image the job fails (a chunk killed every time at the hard limit, a broker that keeps
    losing them), and Retry makes its missing images. A chunk that kills its worker is failed
    sooner, by its count of deliveries (MAX_DELIVERIES). Run by Celery beat
    (config/celery.py), never by a page.
    """
    silence = settings.GENERATION_SILENCE_SECONDS
    if not silent_jobs(silence).exists():
        return 0
    if waiting_tasks() != 0:
        return 0  # chunks wait in the queue (maybe this job's), or the broker did not say
    swept = 0
    for job in silent_jobs(silence):
        stale = silent_jobs(silence).filter(pk=job.pk, attempt=job.attempt)
        if job.resends >= MAX_RESENDS:
            missing = job.count - job.images().count()
            swept += stale.update(
                status=Status.FAILED,
                finished=timezone.now(),
                error=f"No worker has worked on this job for over {silence} s, with no task waiting "
                f"in the {GPU_QUEUE} queue, after its missing chunks were sent again {job.resends} times; "
                f"{missing} image(s) are missing (a chunk that hits the hard time limit every time, "
                "a broker that loses its messages, a storage out of reach?). Retry it to make them.",
            )
            continue
        with transaction.atomic():
            if stale.update(attempt=F("attempt") + 1, resends=F("resends") + 1, heartbeat=timezone.now()):
                swept += 1
                job.refresh_from_db()
                logger.warning("Job %s lost its chunks: sent again (attempt %s)", job.pk, job.attempt)
                _enqueue_missing(job)
    return swept


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
                f"The chunk from seed {seeds[0]} ended its worker {MAX_DELIVERIES} times (out of host "
                "memory, a crash in the GPU stack, the hard time limit?); see the worker's log.",
            )
            return
        now = timezone.now()
        GenerationJob.objects.filter(pk=job_id, status=Status.QUEUED).update(status=Status.RUNNING)
        GenerationJob.objects.filter(pk=job_id, started__isnull=True).update(started=now)
        _beat(job_id)
        version = job.version
        todo = missing_seeds(version, seeds)
        with _beating(job_id):
            loaded = pipelines.pipeline_for(version) if todo else None
        on_step = _beats_every(job_id)
        batch = len(todo)
        while todo:
            if not _still_wanted(job_id, attempt):
                return
            part = todo[:batch]
            try:
                made, problem = _make(loaded, version, part, on_step)
            except pipelines.OutOfMemory:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)  # halve and try again, down to one image
                continue
            _record_all(job, version, made, loaded)  # the good images of a batch are kept
            _beat(job_id, progress=bool(made))
            if problem:
                raise RuntimeError(problem)
            todo = todo[len(part) :]
    except SoftTimeLimitExceeded:
        _fail(job_id, f"A chunk ran past the time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT} s).")
        return
    except Exception as exc:
        if storage_unreachable(exc) or storage_unreachable(exc.__cause__):
            # A storage out of reach for a while (a link down, a server restarting) is not the
            # job's failure: nothing of the batch was kept, and the sweep sends the missing
            # images again once the job has been silent; it fails the job only if the storage
            # stays away through MAX_RESENDS silences.
            logger.warning(
                "Job %s: the storage cannot be reached (%s); seeds %s..%s are left to the sweep",
                job_id,
                storage_error_text(exc.__cause__ or exc),
                seeds[0],
                seeds[-1],
            )
            return
        if isinstance(exc, NotStored):
            # Not the chunk's fault, and no traceback for the researcher: the worker's log has it.
            logger.error("Job %s: %s", job_id, exc, exc_info=exc.__cause__)
            _fail(job_id, str(exc))
            return
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


def _make(loaded, version: ModelVersion, seeds: list[int], on_step=None) -> tuple[list[Made], str]:
    """Generate a batch; an output that is not an image is remade with another seed.

    Returns the images made and, if one seed never gave an image, why. `on_step` is
    called before each denoising step.
    """
    from . import pipelines

    prompts = [prompt_for(version, seed) for seed in seeds]
    start = time.perf_counter()
    images = pipelines.generate(loaded, version, seeds=seeds, prompts=prompts, on_step=on_step)
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
            image = pipelines.generate(loaded, version, seeds=[used], prompts=[prompt], on_step=on_step)[0]
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


class NotStored(Exception):
    """A batch's files could not be written (a full disk, a storage that refuses); none is left."""


def _record_all(job: GenerationJob, version: ModelVersion, made: list[Made], loaded) -> None:
    """Write the batch's files first, then its rows in one short transaction.

    Normalising and writing files happen outside the transaction (SQLite would hold
    its write lock meanwhile). Whatever fails, a file written but not kept (its row not
    saved, or a later file of the batch not written) is deleted: a batch leaves its
    images complete, or nothing.
    """
    built = []
    kept = set()
    try:
        try:
            for m in made:
                built.append((_build(version, m), m))
        except storage_errors() as exc:
            raise NotStored(_storage_problem(made, exc)) from exc
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
    except BaseException:
        kept.clear()
        raise
    finally:
        for image, _ in built:
            if id(image) not in kept:
                _delete_unkept(image)


# Deleting a batch's unkept files is tried again this often, this long apart (seconds), when
# the storage cannot be reached: a storage back within them leaves no orphaned file.
DELETE_WAITS = (1, 2, 4, 8)


def _delete_unkept(image: Image) -> None:
    """Delete a file written for an image that was not kept; wait out a storage briefly away."""
    for wait in (*DELETE_WAITS, None):
        try:
            files_delete(image)
            return
        except storage_errors() as exc:
            if wait is None or not storage_unreachable(exc):
                logger.error(
                    "Could not delete %s, written but not kept (an orphaned file): %s",
                    image.file.name,
                    storage_error_text(exc),
                )
                return
            time.sleep(wait)


def _storage_problem(made: list[Made], exc: BaseException) -> str:
    seeds = f"{made[0].seed}..{made[-1].seed}"
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        why = "the media storage is full"
    elif code in (errno.EFBIG, errno.EDQUOT):
        why = "the media storage refused the file's size (a quota or a file size limit)"
    else:
        why = f"the media storage failed ({storage_error_text(exc)})"
    return (
        f"Could not store the images of seeds {seeds}: {why}. No file of this batch was kept; "
        "free space (or fix the storage), then Retry the job to make its missing images."
    )


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


def worker_name() -> str:
    """The Celery worker making this image (its node name, e.g. gpu@host1), for each worker's share."""
    from celery import current_task

    hostname = getattr(getattr(current_task, "request", None), "hostname", None)
    return hostname or socket.gethostname()


def _provenance(version: ModelVersion, made: Made, loaded) -> dict:
    from . import pipelines

    scheduler = loaded.pipe.scheduler
    return _jsonable(
        {
            **pipelines.describe(loaded),
            "worker": worker_name(),
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
