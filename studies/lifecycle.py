"""A study's life: draft, preparing (images drawn, missing ones generated), ready, open, closed.

What readers see is drawn at "prepare" from the researcher's choices with a
recorded secure seed, and frozen when the study opens. Opening is refused until
every image exists and the blinding audit passes, unless the researcher gives a
reason, which is recorded with the audit that was overridden.
"""

import io
import logging
import random
import secrets
from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from .images import file_write
from .imaging.normalise import normalise
from .models import Image, Presentation, Study, StudyImage, StudyModel, StudyReader

logger = logging.getLogger(__name__)
Status = Study.Status


class StudyRefused(Exception):
    """A step of a study's life that cannot be taken now; the message says why, for the researcher."""


@dataclass(frozen=True)
class ArmNeed:
    arm: StudyModel
    study_images: int
    practice_images: int

    @property
    def total(self) -> int:
        return self.study_images + self.practice_images


def _needs(study: Study) -> tuple[int, list[ArmNeed]]:
    """Real practice images, and each arm's images: half the practice is real, the rest spread over arms."""
    arms = list(study.arms.select_related("model").order_by("model__name"))
    practice = study.practice_count
    real_practice = (practice + 1) // 2 if arms else practice
    fake_practice = practice - real_practice
    needs = []
    for index, arm in enumerate(arms):
        share = fake_practice // len(arms) + (1 if index < fake_practice % len(arms) else 0)
        needs.append(ArmNeed(arm=arm, study_images=arm.count, practice_images=share))
    return real_practice, needs


def _real_pool(study: Study):
    return Image.objects.filter(origin=Image.Origin.REAL, image_set__in=study.real_sets.all())


def _check_design(study: Study) -> None:
    problems = []
    real_practice, needs = _needs(study)
    if not needs:
        problems.append("add at least one model, with how many of its images to show")
    if study.real_count == 0:
        problems.append("add real radiographs: readers need real images to tell the synthetic ones from")
    elif not study.real_sets.exists():
        problems.append("choose the image sets to draw real radiographs from")
    else:
        available = _real_pool(study).count()
        wanted = study.real_count + real_practice
        if wanted > available:
            problems.append(
                f"{wanted} real radiographs are wanted ({study.real_count} for the study, {real_practice} "
                f"for practice) but the chosen sets hold {available}"
            )
    if problems:
        raise StudyRefused("Cannot prepare: " + "; ".join(problems) + ".")


@transaction.atomic
def study_prepare(*, study: Study) -> Study:
    """Fix each model's settings version and generate whatever images are missing.

    The images themselves are drawn once every job is done (`study_preparation_check`).
    """
    from generation.jobs import job_launch

    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Status.DRAFT:
        raise StudyRefused(f"Only a draft can be prepared; this study is {study.status}.")
    _check_design(study)
    _real_practice, needs = _needs(study)
    for need in needs:
        arm = need.arm
        arm.version = arm.model.current_version
        have = arm.version.images.count()
        arm.job = job_launch(version=arm.version, count=need.total - have) if have < need.total else None
        arm.save(update_fields=["version", "job"])
    study.status = Status.PREPARING
    study.selection_seed = secrets.randbits(63)
    study.save(update_fields=["status", "selection_seed"])
    if not any(need.arm.job for need in needs):
        # Nothing to generate: draw on a worker now. Otherwise the end of the jobs
        # starts the draw (studies.tasks.preparations_after_job).
        from .tasks import preparation_advance  # it imports this module

        preparation_advance.delay_on_commit(study.pk)
    return study


def preparation_jobs(study: Study) -> list:
    """The generation jobs a preparing study waits on, for its progress bars."""
    return [arm.job for arm in study.arms.select_related("job__version__model") if arm.job]


def preparation_error(study: Study) -> str:
    """Why preparation cannot finish (a failed or cancelled job), or ''."""
    from generation.models import GenerationJob

    for job in preparation_jobs(study):
        if job.status in (GenerationJob.Status.FAILED, GenerationJob.Status.CANCELLED):
            return f"The generation job for {job.version.model} {job.status}: {job.error or 'no message'}"
    return ""


@transaction.atomic
def study_preparation_check(*, study: Study) -> Study:
    """Once every model has its images, draw the study's images and make it ready.

    Run on a worker (studies.tasks) after prepare, when a job it waits on is
    done, and by beat's safety net; never by a page. Drawing twice cannot happen,
    as the study row is locked.
    """
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Status.PREPARING:
        return study
    real_practice, needs = _needs(study)
    if any(need.arm.version.images.count() < need.total for need in needs):
        return study
    rng = random.Random(study.selection_seed)
    chosen: list[tuple[int, bool]] = []

    def draw(ids: list[int], study_n: int, practice_n: int) -> None:
        picked = rng.sample(sorted(ids), study_n + practice_n)
        chosen.extend((image_id, False) for image_id in picked[:study_n])
        chosen.extend((image_id, True) for image_id in picked[study_n:])

    draw(list(_real_pool(study).values_list("pk", flat=True)), study.real_count, real_practice)
    for need in needs:
        draw(
            list(need.arm.version.images.values_list("image_id", flat=True)),
            need.study_images,
            need.practice_images,
        )
    _images_replace(study, chosen)
    study.status = Status.READY
    study.audit_report = study_audit(study).as_dict()
    study.save(update_fields=["status", "audit_report"])
    return study


def _images_replace(study: Study, chosen: list[tuple[int, bool]]) -> None:
    for old in study.images.exclude(file=""):
        old.file.delete(save=False)
    study.images.all().delete()
    images = Image.objects.in_bulk([image_id for image_id, _ in chosen])
    rows = []
    for image_id, practice in chosen:
        row = StudyImage(study=study, image=images[image_id], practice=practice)
        if row.image.size != study.image_size:
            file_write(row.file, _resized(row.image, study.image_size))
        rows.append(row)
    StudyImage.objects.bulk_create(rows)


def _resized(image: Image, size: int) -> bytes:
    """The reader image at another size, through the same normaliser.

    Made from the stored reader image, whatever the origin, so that real and
    synthetic images get exactly the same processing.
    """
    with image.file.open("rb") as f:
        grey = np.asarray(PILImage.open(io.BytesIO(f.read())).convert("L"), dtype=np.float32) / 255.0
    return normalise(grey, size=size)


@transaction.atomic
def study_back_to_draft(*, study: Study) -> Study:
    """Undo a prepare (to change what the study shows); images made stay with their models."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status not in (Status.PREPARING, Status.READY):
        raise StudyRefused(f"Only a preparing or ready study goes back to draft; this one is {study.status}.")
    _images_replace(study, [])
    study.status = Status.DRAFT
    study.audit_report = {}
    study.save(update_fields=["status", "audit_report"])
    return study


def files_missing(study: Study) -> list[StudyImage]:
    missing = []
    for row in study.images.select_related("image"):
        field = row.file or row.image.file
        if not field or not field.storage.exists(field.name):
            missing.append(row)
    return missing


def study_audit(study: Study):
    """The blinding audit of the study's images (practice excluded), as readers would download them."""
    from .audit import audit

    def items():
        for row in study.images.filter(practice=False).select_related("image"):
            field = row.file or row.image.file
            with field.open("rb") as f:
                yield f.read(), row.image.origin == Image.Origin.SYNTHETIC

    return audit(items())


@transaction.atomic
def study_audit_store(*, study: Study) -> Study:
    """Run the blinding audit again and keep its report (before the study opens)."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Status.READY:
        raise StudyRefused("The audit runs on a ready study's images; prepare the study first.")
    study.audit_report = study_audit(study).as_dict()
    study.save(update_fields=["audit_report"])
    return study


@transaction.atomic
def study_open(*, study: Study, user, override_reason: str = "") -> Study:
    """Freeze the images and let readers in; every assigned reader gets their sequence now."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Status.READY:
        raise StudyRefused(f"Only a ready study can be opened; this one is {study.status}.")
    missing = files_missing(study)
    if missing:
        raise StudyRefused(f"{len(missing)} of the study's image files are missing; prepare it again.")
    report = study_audit(study)
    override_reason = override_reason.strip()
    if not report.passed and not override_reason:
        raise StudyRefused(
            "The blinding audit found shortcuts: "
            + "; ".join(report.problems)
            + ". Fix the images, or open anyway with a reason that will be recorded."
        )
    study.audit_report = report.as_dict()
    study.override_reason = override_reason if not report.passed else ""
    study.status = Status.OPEN
    study.opened = timezone.now()
    study.opened_by = user
    study.save()
    for place in study.readers.all():
        sequence_build(place=place)
    return study


@transaction.atomic
def study_close(*, study: Study) -> Study:
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Status.OPEN:
        raise StudyRefused(f"Only an open study can be closed; this one is {study.status}.")
    study.status = Status.CLOSED
    study.closed = timezone.now()
    study.save(update_fields=["status", "closed"])
    return study


def sequence_build(*, place: StudyReader) -> int:
    """Create a reader's presentations from the frozen image list, once; returns how many."""
    from .sequences import sequence_order

    study = place.study
    if Presentation.objects.filter(study=study, reader=place.reader).exists():
        return 0
    rows = study.images.values_list("image_id", "practice")
    slots = sequence_order(
        images=[image_id for image_id, practice in rows if not practice],
        practice=[image_id for image_id, practice in rows if practice],
        repeat_percent=study.repeat_percent,
        seed=place.seed,
    )
    Presentation.objects.bulk_create(
        Presentation(
            study=study,
            reader=place.reader,
            image_id=slot.image_id,
            position=position,
            is_repeat=slot.is_repeat,
            is_practice=slot.is_practice,
        )
        for position, slot in enumerate(slots)
    )
    return len(slots)
