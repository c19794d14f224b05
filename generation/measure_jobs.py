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

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from config.storage import storage_error_text, storage_errors
from studies.models import Image, ImageSet

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


def measure_job_create(*, version: ModelVersion, reference_sets, extractors=None) -> MeasureJob:
    extractors = list(extractors or MeasureJob.Extractor.values)
    unknown = sorted(set(extractors) - set(MeasureJob.Extractor.values))
    if unknown:
        known = ", ".join(MeasureJob.Extractor.values)
        raise MeasureRefused(f"Unknown extractor {', '.join(unknown)}: choose from {known}.")
    reference_sets = list(reference_sets)
    if not reference_sets:
        raise MeasureRefused("Choose at least one image set of real radiographs to measure against.")
    if GeneratedImage.objects.filter(version=version).count() < 2:
        raise MeasureRefused(f"{version} has fewer than 2 images: generate some first.")
    real = Image.objects.filter(image_set__in=reference_sets, origin=Image.Origin.REAL).count()
    if real < 2:
        names = ", ".join(s.name for s in reference_sets)
        raise MeasureRefused(f"The reference sets ({names}) hold fewer than 2 real images.")
    with transaction.atomic():
        job = MeasureJob.objects.create(version=version, extractors=extractors)
        job.reference_sets.set(reference_sets)
        transaction.on_commit(lambda: _queue(job.pk))
    return job


def _queue(job_id: int) -> None:
    from .tasks import measure

    measure.delay(job_id)


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


def measure_run(*, job_id: int) -> None:
    job = MeasureJob.objects.select_related("version__model").get(pk=job_id)
    if job.status not in (MeasureJob.Status.QUEUED, MeasureJob.Status.RUNNING):
        return  # done, failed or cancelled: a second delivery stands down
    MeasureJob.objects.filter(pk=job.pk).update(status=MeasureJob.Status.RUNNING, started=timezone.now())
    try:
        results = _measure(job)
    except Exception as exc:
        logger.exception("Measure job %s failed", job.pk)
        MeasureJob.objects.filter(pk=job.pk).update(
            status=MeasureJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished=timezone.now()
        )
        return
    MeasureJob.objects.filter(pk=job.pk).update(
        status=MeasureJob.Status.DONE, results=results, finished=timezone.now()
    )


def _measure(job: MeasureJob) -> dict:
    from . import features as networks
    from . import measures

    version = job.version
    left_out: list[str] = []
    synthetic = _readable(
        list(Image.objects.filter(generated__version=version).order_by("generated__seed")),
        "synthetic",
        left_out,
    )
    reference_sets = list(job.reference_sets.order_by("name"))
    real = _readable(
        list(Image.objects.filter(image_set__in=reference_sets, origin=Image.Origin.REAL).order_by("pk")),
        "real",
        left_out,
    )
    training = _readable(_training_images(version), "training", left_out)
    extractors, skipped = [], {}
    for name in job.extractors:
        load, setting = LOADERS[name]
        try:
            extractors.append(getattr(networks, load)(getattr(settings, setting)))
        except (networks.WeightsMissing, networks.WeightsRefused) as exc:
            skipped[name] = str(exc)
    per_extractor = len(synthetic) + len(real) + len(training)
    MeasureJob.objects.filter(pk=job.pk).update(total=per_extractor * len(extractors), done=0)
    done = 0

    def progress(count):
        MeasureJob.objects.filter(pk=job.pk).update(done=done + count)

    images = {"synthetic": _loaders(synthetic), "real": _loaders(real), "training": _loaders(training)}
    results: dict = {
        "version": str(version),
        "reference_sets": [s.name for s in reference_sets],
        "n_synthetic": len(synthetic),
        "n_real": len(real),
        "n_training": len(training),
        "left_out": left_out,
        "extractors": {name: {"skipped": reason} for name, reason in skipped.items()},
    }
    features: dict[str, dict[str, np.ndarray]] = {}
    for extractor in extractors:
        features[extractor.name] = {}
        for kind, loaders in images.items():
            features[extractor.name][kind] = measures.features_of(extractor, loaders, progress=progress)
            done += len(loaders)
        results["extractors"][extractor.name] = measures.feature_measures(
            features[extractor.name]["real"], features[extractor.name]["synthetic"], extractor
        )
    results["diversity"] = {
        "synthetic": measures.diversity(images["synthetic"]),
        "real": measures.diversity(images["real"]),
    }
    results["memorisation"] = _memorisation(extractors, features, images, synthetic, real, training)
    return results


def _memorisation(extractors, features, images, synthetic, real, training) -> dict:
    """Nearest neighbours of each synthetic image among the training images and the references,
    on the first extractor that ran (XRV before Inception, as asked)."""
    from . import measures

    thresholds = measures.Thresholds()
    if not extractors:
        return {"note": "No extractor ran (no weights file): nearest neighbours need features."}
    name = extractors[0].name
    found = {"extractor": name, "thresholds": {"cosine": thresholds.cosine, "ssim": thresholds.ssim}}
    for kind, rows in (("training", training), ("reference", real)):
        if not rows:
            found[kind] = {"note": "The model was not trained in this app." if kind == "training" else ""}
            continue
        matches = measures.nearest_copies(
            images["synthetic"],
            features[name]["synthetic"],
            images["training" if kind == "training" else "real"],
            features[name]["training" if kind == "training" else "real"],
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
