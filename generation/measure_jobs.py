"""Measuring jobs: a model version's images against reference image sets, on a GPU-queue worker.

`measure_job_create` checks what it is asked and queues the job; `measure_run` (the task's
body) loads the extractors whose weights files exist, passes every image through each,
computes the measures (generation/measures.py) and stores them in `MeasureJob.results`, with
progress in `done` / `total`. Images are read from the storage one at a time, when needed:
10,000 images are never all in memory.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from PIL import Image as PILImage

from config.storage import storage_error_text, storage_errors
from studies.models import Image, ImageSet, Study

from .models import GeneratedImage, MeasureJob, ModelVersion, TrainingJob

logger = logging.getLogger(__name__)

# Each extractor's loader (in generation/features.py) and the setting naming its weights file.
# torch and the networks are imported where a job runs, never where one is created: the admin
# and a worker's parent process (which must not initialise CUDA) import this module too.
LOADERS = {
    MeasureJob.Extractor.XRV: ("load_xrv_densenet", "METRICS_XRV_WEIGHTS"),
    MeasureJob.Extractor.INCEPTION: ("load_fid_inception", "METRICS_INCEPTION_WEIGHTS"),
}


class MeasureRefused(Exception):
    """What was asked cannot be measured: the reason, for the researcher."""


def measure_job_create(
    *, version: ModelVersion | None = None, study=None, reference_sets=(), extractors=None
) -> MeasureJob:
    """Queue the measures of a version's images against reference sets, or of each arm of a
    study against the study's real images."""
    extractors = list(extractors or MeasureJob.Extractor.values)
    unknown = sorted(set(extractors) - set(MeasureJob.Extractor.values))
    if unknown:
        known = ", ".join(MeasureJob.Extractor.values)
        raise MeasureRefused(f"Unknown extractor {', '.join(unknown)}: choose from {known}.")
    reference_sets = list(reference_sets)
    if study is not None:
        _study_refusal(study)
    else:
        if not reference_sets:
            raise MeasureRefused("Choose at least one image set of real radiographs to measure against.")
        if GeneratedImage.objects.filter(version=version).count() < 2:
            raise MeasureRefused(f"{version} has fewer than 2 images: generate some first.")
        real = Image.objects.filter(image_set__in=reference_sets, origin=Image.Origin.REAL).count()
        if real < 2:
            names = ", ".join(s.name for s in reference_sets)
            raise MeasureRefused(f"The reference sets ({names}) hold fewer than 2 real images.")
    with transaction.atomic():
        job = MeasureJob.objects.create(version=version, study=study, extractors=extractors)
        job.reference_sets.set(reference_sets)
        _queue(job.pk)
    return job


def _study_refusal(study: Study) -> None:
    if study.status in (Study.Status.DRAFT, Study.Status.PREPARING):
        raise MeasureRefused(
            f"The study is {study.get_status_display().lower()}: its images are drawn when it is "
            "prepared; measure it once it is ready."
        )
    shown = study.images.filter(practice=False)
    if shown.filter(image__origin=Image.Origin.REAL).count() < 2:
        raise MeasureRefused("The study shows fewer than 2 real images: there is nothing to measure against.")
    if not study.arms.exists():
        raise MeasureRefused("The study has no model arm.")


def _queue(job_id: int, attempt: int = 1) -> None:
    from .tasks import measure

    measure.delay_on_commit(job_id, attempt)


def image_pixels(image: Image) -> np.ndarray:
    """An image's reader file (the normalised PNG every reader sees) as grey levels in [0, 1]."""
    with image.file.open("rb") as f:
        decoded = PILImage.open(io.BytesIO(f.read()))
        decoded.load()
    maximum = 65535.0 if decoded.mode.startswith("I") else 255.0
    if decoded.mode not in ("L", "I", "I;16"):
        decoded = decoded.convert("L")
    return np.asarray(decoded, dtype=np.float32) / maximum


def _readable(images: list[Image], kind: str, left_out: list[str]) -> list[Image]:
    """The images whose stored file reads as an image; each other one is left out and named
    (one missing or damaged file does not cost the whole job). Reading a PNG costs little
    beside passing it through a network, so each is read once here to check it."""
    kept = []
    for image in images:
        try:
            image_pixels(image)
        except (ValueError, *storage_errors()) as exc:
            left_out.append(f"{kind} image {image.pk} left out: {storage_error_text(exc)} ({exc})"[:300])
        else:
            kept.append(image)
    return kept


def _loaders(images) -> list:
    return [lambda image=image: image_pixels(image) for image in images]


def _training_images(version: ModelVersion) -> list[Image]:
    """The images the model was trained on, where a training job of this app made it."""
    job = TrainingJob.objects.filter(model=version.model).first()
    if job is None:
        return []
    return list(Image.objects.filter(image_set__in=job.image_sets.all()).order_by("pk"))


class _Stopped(Exception):
    """The job was cancelled, or its attempt moved on (a retry, the sweep): stop computing."""


def _still_wanted(job_id: int, attempt: int) -> bool:
    return MeasureJob.objects.filter(
        pk=job_id, attempt=attempt, status__in=[MeasureJob.Status.QUEUED, MeasureJob.Status.RUNNING]
    ).exists()


def _beat(job_id: int) -> None:
    MeasureJob.objects.filter(pk=job_id).update(heartbeat=timezone.now())


def measure_run(*, job_id: int, attempt: int = 1) -> None:
    """The `measure` task's body. Safe to deliver twice: a job no longer queued, or whose attempt
    moved on, is left alone, and so is a running one whose worker still reports (a thread beats
    every few seconds while it computes); one whose worker fell silent is taken over."""
    from celery.exceptions import SoftTimeLimitExceeded

    from .jobs import _beating

    now = timezone.now()
    silent = now - timedelta(seconds=settings.GENERATION_SILENCE_SECONDS)
    claimed = MeasureJob.objects.filter(pk=job_id, attempt=attempt).filter(
        Q(status=MeasureJob.Status.QUEUED)
        | Q(status=MeasureJob.Status.RUNNING, heartbeat__lt=silent)
        | Q(status=MeasureJob.Status.RUNNING, heartbeat__isnull=True)
    )
    if not claimed.update(status=MeasureJob.Status.RUNNING, heartbeat=now, started=now, error=""):
        return  # done, failed, cancelled, another attempt's, or running on a worker that reports
    job = MeasureJob.objects.select_related("version__model", "study").get(pk=job_id)
    mine = MeasureJob.objects.filter(pk=job_id, attempt=attempt, status=MeasureJob.Status.RUNNING)

    def check():
        if not _still_wanted(job_id, attempt):
            raise _Stopped

    try:
        with _beating(job_id, beat=_beat):
            results = _measure(job, check=check)
    except _Stopped:
        return
    except SoftTimeLimitExceeded:
        mine.update(
            status=MeasureJob.Status.FAILED,
            finished=timezone.now(),
            error="The measures took longer than a task may run (CELERY_TASK_SOFT_TIME_LIMIT, "
            f"{settings.CELERY_TASK_SOFT_TIME_LIMIT} s): raise it on the GPU workers, or measure "
            "fewer images.",
        )
        return
    except Exception as exc:
        logger.exception("Measure job %s failed", job_id)
        mine.update(
            status=MeasureJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished=timezone.now()
        )
        return
    mine.update(status=MeasureJob.Status.DONE, results=results, finished=timezone.now())


def measure_cancel(*, job: MeasureJob) -> bool:
    """Stop a queued or running job; the worker stops after its current batch of images."""
    return bool(
        MeasureJob.objects.filter(
            pk=job.pk, status__in=[MeasureJob.Status.QUEUED, MeasureJob.Status.RUNNING]
        ).update(status=MeasureJob.Status.CANCELLED, finished=timezone.now())
    )


def measure_retry(*, job: MeasureJob) -> bool:
    """Queue a failed or cancelled job again, from the start, under a new attempt (a task of the
    earlier attempt still on its way stands down)."""
    with transaction.atomic():
        retried = MeasureJob.objects.filter(
            pk=job.pk, status__in=[MeasureJob.Status.FAILED, MeasureJob.Status.CANCELLED]
        ).update(
            status=MeasureJob.Status.QUEUED,
            attempt=F("attempt") + 1,
            resumes=0,
            done=0,
            error="",
            finished=None,
            heartbeat=timezone.now(),
        )
        if retried:
            job.refresh_from_db()
            _queue(job.pk, job.attempt)
    return bool(retried)


# The sweep sends a silent job again this many times; then it fails it (a job that kills its worker).
MAX_RESUMES = 3


def measure_sweep() -> int:
    """Send again the task of measure jobs that no worker works on: a running job whose worker
    fell silent (killed, out of memory, a lost host), a queued one whose task the broker lost
    (a restart that kept nothing). Silent means no sign for GENERATION_SILENCE_SECONDS; a queued
    job counts as lost only while no task waits in the `gpu` queue. Each resend raises the
    attempt, so a late copy of the lost task stands down; after MAX_RESUMES the job fails.
    Run by Celery beat (config/celery.py), never by a page."""
    from .jobs import waiting_tasks

    silence = settings.GENERATION_SILENCE_SECONDS
    limit = timezone.now() - timedelta(seconds=silence)
    silent = MeasureJob.objects.annotate(since=Coalesce("heartbeat", "started", "created")).filter(
        since__lt=limit
    )
    running = silent.filter(status=MeasureJob.Status.RUNNING)
    queued = silent.filter(status=MeasureJob.Status.QUEUED)
    lost = list(running)
    if queued.exists() and waiting_tasks() == 0:
        lost += list(queued)
    swept = 0
    for job in lost:
        stale = silent.filter(pk=job.pk, attempt=job.attempt, status=job.status)
        if job.resumes >= MAX_RESUMES:
            swept += stale.update(
                status=MeasureJob.Status.FAILED,
                finished=timezone.now(),
                error=f"No worker has worked on this job for over {silence} s, {job.resumes + 1} times "
                "(a job that kills its worker: out of memory?). Retry starts it again.",
            )
            continue
        with transaction.atomic():
            if stale.update(
                status=MeasureJob.Status.QUEUED,
                attempt=F("attempt") + 1,
                resumes=F("resumes") + 1,
                heartbeat=timezone.now(),
            ):
                swept += 1
                logger.warning("Measure job %s lost its worker or task: sent again", job.pk)
                _queue(job.pk, job.attempt + 1)
    return swept


@dataclass
class _Arm:
    """Synthetic images measured together (a version's, or a study arm's) and the images their
    model was trained on."""

    name: str
    version: ModelVersion
    synthetic: list[Image]
    training: list[Image]


def _targets(job: MeasureJob, left_out: list[str]) -> tuple[list[Image], list[_Arm]]:
    """The real images and the arms a job measures, each image checked readable."""
    if job.study_id is None:
        version = job.version
        synthetic = Image.objects.filter(generated__version=version).order_by("generated__seed")
        real = Image.objects.filter(image_set__in=job.reference_sets.all(), origin=Image.Origin.REAL)
        wanted = [(str(version.model), version, synthetic)]
    else:
        shown = Image.objects.filter(pk__in=job.study.images.filter(practice=False).values("image"))
        real = shown.filter(origin=Image.Origin.REAL)
        wanted = [
            (arm.model.name, arm.version, shown.filter(generated__version__model=arm.model).order_by("pk"))
            for arm in job.study.arms.select_related("model", "version").order_by("model__name")
        ]
    real = _readable(list(real.order_by("pk")), "real", left_out)
    arms = []
    for name, version, synthetic in wanted:
        suffix = "" if job.study_id is None else f" ({name})"
        arms.append(
            _Arm(
                name=name,
                version=version,
                synthetic=_readable(list(synthetic), f"synthetic{suffix}", left_out),
                training=_readable(_training_images(version), f"training{suffix}", left_out),
            )
        )
    return real, arms


def _extractors(job: MeasureJob) -> tuple[list, dict[str, str]]:
    """The extractors whose weights load, and why each other one was skipped."""
    from . import features as networks

    extractors, skipped = [], {}
    for name in job.extractors:
        load, setting = LOADERS[name]
        try:
            extractors.append(getattr(networks, load)(getattr(settings, setting)))
        except (networks.WeightsMissing, networks.WeightsRefused) as exc:
            skipped[name] = str(exc)
    return extractors, skipped


def _measure(job: MeasureJob, check=lambda: True) -> dict:
    """A version's job: {n_synthetic, n_real, n_training, extractors, diversity, memorisation,
    left_out, ...}. A study's job: the same per arm under "arms", the real images' share once.
    `check()` runs after each batch of images and between steps: it raises to stop the job."""
    from . import measures

    left_out: list[str] = []
    real, arms = _targets(job, left_out)
    extractors, skipped = _extractors(job)
    per_extractor = len(real) + sum(len(arm.synthetic) + len(arm.training) for arm in arms)
    MeasureJob.objects.filter(pk=job.pk).update(total=per_extractor * len(extractors), done=0)
    done = 0

    def progress(count):
        check()
        MeasureJob.objects.filter(pk=job.pk).update(done=done + count)

    def features_of(extractor, images):
        nonlocal done
        found = measures.features_of(extractor, images, progress=progress)
        done += len(images)
        return found

    real_images = _loaders(real)
    real_features = {}
    for extractor in extractors:
        real_features[extractor.name] = features_of(extractor, real_images)
    if not extractors:
        real_features[PIXELS] = measures.pixel_features(real_images)
    real_diversity = measures.diversity(real_images)
    measured = {}
    for arm in arms:
        images = {
            "synthetic": _loaders(arm.synthetic),
            "real": real_images,
            "training": _loaders(arm.training),
        }
        features: dict[str, dict[str, np.ndarray]] = {}
        found: dict = {
            "version": str(arm.version),
            "n_synthetic": len(arm.synthetic),
            "n_real": len(real),
            "n_training": len(arm.training),
            "extractors": {name: {"skipped": reason} for name, reason in skipped.items()},
        }
        for extractor in extractors:
            features[extractor.name] = {
                "real": real_features[extractor.name],
                "synthetic": features_of(extractor, images["synthetic"]),
                "training": features_of(extractor, images["training"]),
            }
            found["extractors"][extractor.name] = measures.feature_measures(
                features[extractor.name]["real"], features[extractor.name]["synthetic"], extractor
            )
        check()
        if not extractors:
            features[PIXELS] = {
                "real": real_features[PIXELS],
                "synthetic": measures.pixel_features(images["synthetic"]),
                "training": measures.pixel_features(images["training"]),
            }
        found["diversity"] = {"synthetic": measures.diversity(images["synthetic"]), "real": real_diversity}
        check()
        found["memorisation"] = _memorisation(extractors, features, images, arm.synthetic, real, arm.training)
        measured[arm.name] = found
    if job.study_id is None:
        (found,) = measured.values()
        return {
            **found,
            "reference_sets": list(job.reference_sets.order_by("name").values_list("name", flat=True)),
            "left_out": left_out,
        }
    return {"study": job.study.title, "n_real": len(real), "left_out": left_out, "arms": measured}


PIXELS = "pixels-32"  # neighbours by pixels where no extractor ran (generation.measures.pixel_features)


def _memorisation(extractors, features, images, synthetic, real, training) -> dict:
    """Nearest neighbours of each synthetic image among the training images and the references,
    on the first extractor that ran (XRV before Inception, as asked); where none ran, on pixels,
    flagged by SSIM alone (a cosine of pixels says little)."""
    from . import measures

    if extractors:
        name, thresholds = extractors[0].name, measures.Thresholds()
    else:
        name, thresholds = PIXELS, measures.Thresholds(cosine=None)
    found = {"extractor": name, "thresholds": {"cosine": thresholds.cosine, "ssim": thresholds.ssim}}
    if not extractors:
        found["note"] = (
            "No extractor ran (no weights file): neighbours were found by pixels (32 x 32) and "
            "flagged by SSIM alone."
        )
    for kind, rows in (("training", training), ("reference", real)):
        if not rows:
            found[kind] = {"note": "The model was not trained in this app." if kind == "training" else ""}
            continue
        source = "training" if kind == "training" else "real"
        matches = measures.nearest_copies(
            images["synthetic"],
            features[name]["synthetic"],
            images[source],
            features[name][source],
            thresholds=thresholds,
        )
        flagged = [
            {
                "image": synthetic[m["synthetic"]].pk,
                "nearest_by_cosine": rows[m["nearest_by_cosine"]].pk,
                "cosine": m["cosine"],
                "nearest_by_ssim": rows[m["nearest_by_ssim"]].pk,
                "ssim": m["ssim"],
            }
            for m in matches
            if m["flagged"]
        ]
        found[kind] = {
            "flagged": flagged,
            "share_flagged": len(flagged) / len(matches),
            "max_ssim": max(m["ssim"] for m in matches),
            "max_cosine": max(m["cosine"] for m in matches),
        }
    return found


def reference_sets_named(names) -> list[ImageSet]:
    found = {s.name: s for s in ImageSet.objects.filter(name__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        raise MeasureRefused(f"No image set named {', '.join(repr(n) for n in missing)}.")
    return [found[name] for name in names]


def _arms_of(job: MeasureJob) -> list[tuple[str, dict]]:
    results = job.results or {}
    if "arms" in results:
        return list(results["arms"].items())
    return [(job.version.model.name, results)] if results else []


def latest_study_measures(study: Study) -> MeasureJob | None:
    """The study's latest finished measure job, if any."""
    return study.measure_jobs.filter(status=MeasureJob.Status.DONE).order_by("-finished", "-pk").first()


def flagged_copies(study: Study) -> list[dict]:
    """The study's synthetic images (practice too) that a finished measure job flagged as possible
    copies of a real radiograph: the study's latest job, and the latest of each arm's version.
    One row per image and kind of neighbour (a training image, a reference image)."""
    shown = dict(
        study.images.filter(image__origin=Image.Origin.SYNTHETIC).values_list("image_id", "practice")
    )
    if not shown:
        return []
    done = MeasureJob.objects.filter(status=MeasureJob.Status.DONE).select_related("version__model")
    jobs = [latest_study_measures(study)]
    for version_id in study.arms.exclude(version=None).values_list("version", flat=True):
        jobs.append(done.filter(version_id=version_id).order_by("-finished", "-pk").first())
    found: dict[tuple[int, str], dict] = {}
    for job in filter(None, jobs):
        for model, arm in _arms_of(job):
            for kind in ("training", "reference"):
                for row in ((arm.get("memorisation") or {}).get(kind) or {}).get("flagged", []):
                    if row["image"] in shown and (row["image"], kind) not in found:
                        found[(row["image"], kind)] = {
                            "image": row["image"],
                            "practice": shown[row["image"]],
                            "model": model,
                            "kind": kind,
                            "neighbour": row["nearest_by_ssim"],
                            "ssim": row["ssim"],
                            "cosine": row["cosine"],
                            "job": job.pk,
                        }
    return sorted(found.values(), key=lambda row: (row["image"], row["kind"]))


def copy_problems(rows: list[dict]) -> list[str]:
    """The audit's warning for flagged copies, naming the images and the jobs that flagged them."""
    images = sorted({row["image"] for row in rows})
    if not images:
        return []
    n, s = len(images), "s" if len(images) != 1 else ""
    named = ", ".join(map(str, images[:10])) + (f" and {n - 10} more" if n > 10 else "")
    jobs = ", ".join(str(job) for job in sorted({row["job"] for row in rows}))
    return [
        f"{n} synthetic image{s} of the study (image{s} {named}) flagged as possible copies of real "
        f"radiographs by measure job {jobs}: a copy of a real image is real to a reader, and may show "
        "a patient; judge each pair on the measure job's page"
    ]
