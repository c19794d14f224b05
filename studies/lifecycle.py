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

from generation.measure_jobs import copy_problems, flagged_copies
from generation.models import GenerationJob, ModelVersion

from .blinding import (
    Pool,
    pool_of,
    reader_problem,
    study_overlaps,
    trained_counts,
    trained_sources,
    training_overlaps,
    training_problems,
)
from .images import file_write
from .imaging.normalise import normalise
from .models import Image, ImageSet, Presentation, Study, StudyImage, StudyModel, StudyReader
from .selectors import study_training_images

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


def _real_images(study: Study):
    return Image.objects.filter(origin=Image.Origin.REAL, image_set__in=study.real_sets.all())


def _real_pool(study: Study) -> Pool:
    """What the real draw may use: never an image that a model under study was trained on."""
    images = _real_images(study)
    trained = trained_sources(images, study_training_images(study))
    return pool_of(study=study, images=images.exclude(source_sha256__in=trained))


def _arm_pool(study: Study, version: ModelVersion) -> Pool:
    return pool_of(study=study, images=Image.objects.filter(generated__version=version))


def _real_shortage(study: Study, real_practice: int) -> str:
    pool = _real_pool(study)
    short = pool.shortage(scored=study.real_count, practice=real_practice)
    if not short:
        return ""
    distinct = len(pool.free) + len(pool.scored_elsewhere) + len(pool.practice_elsewhere)
    taken = (
        f"{len(pool.practice_elsewhere)} are practice in other studies (never scored here) "
        f"and {len(pool.scored_elsewhere)} are scored in other studies (never practice here)"
    )
    wanted = (
        f"{study.real_count + real_practice} real radiographs are wanted ({study.real_count} for the study, "
        f"{real_practice} for practice) but the chosen sets hold "
    )
    total, per_model = trained_counts(_real_images(study), study_training_images(study))
    if total:
        remain = (
            f"of the {distinct} that remain, {taken}" if distinct > len(pool.free) else f"{distinct} remain"
        )
        return (
            wanted + f"{distinct + total}, of which {total} trained a model under study ({per_model}) "
            f"and {'is' if total == 1 else 'are'} never shown as real; {remain}"
        )
    return wanted + f"{distinct}" + (f", of which {taken}" if distinct > len(pool.free) else "")


def _check_design(study: Study) -> None:
    problems = []
    real_practice, needs = _needs(study)
    if not needs:
        problems.append("add at least one model, with how many of its images to show")
    if study.real_count == 0:
        problems.append("add real radiographs: readers need real images to tell the synthetic ones from")
    elif not study.real_sets.exists():
        problems.append("choose the image sets to draw real radiographs from")
    elif shortage := _real_shortage(study, real_practice):
        problems.append(shortage)
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
        need.arm.version = need.arm.model.current_version
    # The versions locked in pk order, as the draw of another study locks them (no deadlock).
    versions = ModelVersion.objects.select_for_update().filter(pk__in=[n.arm.version.pk for n in needs])
    list(versions.order_by("pk").values("pk"))
    for need in needs:
        arm = need.arm
        short = _arm_pool(study, arm.version).shortage(
            scored=need.study_images, practice=need.practice_images
        )
        arm.job = job_launch(version=arm.version, count=short) if short else None
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
    """Why preparation cannot finish (a failed or cancelled job, images taken meanwhile), or ''."""
    if study.preparation_error:
        return study.preparation_error
    jobs = preparation_jobs(study)
    for job in jobs:
        if job.status in (GenerationJob.Status.FAILED, GenerationJob.Status.CANCELLED):
            return f"The generation job for {job.version.model} {job.status}: {job.error or 'no message'}"
    if any(job.status != GenerationJob.Status.DONE for job in jobs):
        return ""
    short = _shortages(study)
    if short:
        return (
            "Another study drew some of the same images meanwhile (they cannot be both practice and scored), "
            f"or a model under study was trained on some since: {'; '.join(short)}. "
            "Send this study back to draft and prepare it again."
        )
    return ""


def _shortages(study: Study) -> list[str]:
    """What the draw lacks, given the other studies' draws; empty once it can be made."""
    real_practice, needs = _needs(study)
    found = [shortage] if (shortage := _real_shortage(study, real_practice)) else []
    for need in needs:
        short = _arm_pool(study, need.arm.version).shortage(
            scored=need.study_images, practice=need.practice_images
        )
        if short:
            found.append(f"{need.arm.model} lacks {short} image{'s' if short != 1 else ''}")
    return found


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
    _draws_lock(study, needs)
    if _shortages(study):
        return study
    rng = random.Random(study.selection_seed)
    chosen: list[tuple[int, bool]] = []

    def draw(pool: Pool, study_n: int, practice_n: int) -> None:
        scored, practice = pool.draw(rng, scored=study_n, practice=practice_n)
        chosen.extend((image_id, False) for image_id in scored)
        chosen.extend((image_id, True) for image_id in practice)

    draw(_real_pool(study), study.real_count, real_practice)
    for need in needs:
        draw(_arm_pool(study, need.arm.version), need.study_images, need.practice_images)
    written: list = []
    try:
        _images_replace(study, chosen, written=written)
        study.audit_report = study_audit(study).as_dict()
    except Exception:
        # The transaction rolls back; the files written for it must go too.
        for field in written:
            field.storage.delete(field.name)
        raise
    study.status = Status.READY
    study.preparation_error = ""
    study.save(update_fields=["status", "audit_report", "preparation_error"])
    return study


def _draws_lock(study: Study, needs: list[ArmNeed]) -> None:
    # Two studies drawing from the same sets or model versions at once would not see
    # each other's practice and scored images; one waits for the other (in pk order, no
    # deadlock). "No key" locks leave workers free to add images to the versions.
    sets = ImageSet.objects.select_for_update(no_key=True, of=("self",)).filter(studies=study)
    list(sets.order_by("pk").values("pk"))
    versions = [need.arm.version_id for need in needs]
    arms = ModelVersion.objects.select_for_update(no_key=True).filter(pk__in=versions)
    list(arms.order_by("pk").values("pk"))


def _images_replace(study: Study, chosen: list[tuple[int, bool]], written: list | None = None) -> None:
    for old in study.images.exclude(file=""):
        old.file.delete(save=False)
    study.images.all().delete()
    images = Image.objects.in_bulk([image_id for image_id, _ in chosen])
    rows = []
    for image_id, practice in chosen:
        row = StudyImage(study=study, image=images[image_id], practice=practice)
        if row.image.size != study.image_size:
            file_write(row.file, _resized(row.image, study.image_size))
            if written is not None:
                written.append(row.file)
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
    study.preparation_error = ""
    study.save(update_fields=["status", "audit_report", "preparation_error"])
    return study


def files_missing(study: Study) -> list[StudyImage]:
    missing = []
    for row in study.images.select_related("image"):
        field = row.file or row.image.file
        if not field or not field.storage.exists(field.name):
            missing.append(row)
    return missing


def study_audit(study: Study):
    """The blinding audit of the study's images (practice excluded), as readers would download them.

    It also reports the study's images that are practice in one study and scored in
    another (readers of both would be told the truth of what they score), and its real
    images that a model under study was trained on (readers would compare a patient
    with the model's copy of them), and its synthetic images that a measure job flagged as
    possible copies of real radiographs (generation/measure_jobs.py).
    """
    from .audit import audit

    def items():
        for row in study.images.filter(practice=False).select_related("image"):
            field = row.file or row.image.file
            with field.open("rb") as f:
                yield f.read(), row.image.origin == Image.Origin.SYNTHETIC

    report = audit(items())
    for overlap in study_overlaps(study):
        report.overlaps.append(overlap.as_dict())
        who = "every reader" if overlap.practice_study == overlap.scored_study else "readers of both"
        report.problems.append(
            f"{overlap.describe()}: {who} would be told the truth of images they score, and are refused; "
            "a study not yet open draws other images when sent back to draft and prepared again"
        )
    found = training_overlaps(study)
    report.trained_on = [overlap.as_dict() for overlap in found]
    report.problems += training_problems(study, found)
    report.possible_copies = flagged_copies(study)
    report.problems += copy_problems(report.possible_copies)
    return report


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
    # Not overridable, unlike the audit: a reader told the truth of what they score is no reader.
    # Only a study with an overlap somewhere can refuse a reader: most open without a query per reader.
    # A removed reader is no obstacle to opening, and gets no sequence.
    members = study.readers.filter(removed__isnull=True)
    places = members.select_related("reader") if study_overlaps(study) else []
    refused = [problem for place in places if (problem := reader_problem(study=study, reader=place.reader))]
    if refused:
        raise StudyRefused("Cannot open: " + " ".join(refused))
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
    for place in members:
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
        washout=bool(study.washout_hours),
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
