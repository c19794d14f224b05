"""The demo's accounts, its trained model and its study, each made once and reused.

Accounts: one researcher and two readers. Passwords are random, made on the first
run and saved (mode 0600) so that every later run prints the same ones and changes
nothing that exists.

Model: a small unconditional DDPM, trained on the demo's worker by an ordinary
training job, on phantoms of their own (other seeds than the study's, so the study
compares the model with phantoms it never saw). Study: once the model is trained,
the demo study goes through the same life as any (draft, prepare, ready, open).
"""

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

DEMO_PHANTOM_SET = "Demo phantoms (not clinical images)"
DEMO_PHANTOM_COUNT = 24  # seeds 0 to 23
DEMO_TRAINING_SET = "Demo training phantoms (not clinical images)"
# Far from the study's seeds: no training phantom is one of the study's phantoms.
DEMO_TRAINING_FIRST_SEED = 100_000
# Training sees them at 32 px: drawn at the smallest size make_phantoms takes, they import fast.
DEMO_TRAINING_PHANTOM_SIZE = 256
DEMO_MODEL = "Demo DDPM (trained on phantoms)"

DEMO_ACCOUNTS = [
    ("researcher", "researcher", True),
    ("reader1", "reader", False),
    ("reader2", "reader", False),
]


@dataclass(frozen=True)
class DemoAccount:
    username: str
    role: str
    password: str


def _load(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save(path: Path, passwords: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(passwords, f, indent=2)
    os.replace(tmp, path)


@transaction.atomic
def demo_accounts_ensure(*, credentials_path: Path) -> list[DemoAccount]:
    """Create the demo accounts that are missing; return all with their passwords."""
    User = get_user_model()
    passwords = _load(credentials_path)
    accounts = []
    for username, role, is_staff in DEMO_ACCOUNTS:
        user = User.objects.filter(username=username).first()
        password = passwords.get(username)
        if user is None or password is None or not user.check_password(password):
            # New, or its password was lost or changed: give it a known one.
            password = secrets.token_urlsafe(9)
            if user is None:
                user = User(username=username)
            user.set_password(password)
            passwords[username] = password
        user.is_staff = user.is_superuser = is_staff
        user.is_active = True
        user.save()
        accounts.append(DemoAccount(username=username, role=role, password=password))
    _save(credentials_path, passwords)
    return accounts


# --- The model: trained by the demo's worker -------------------------------------------


@dataclass(frozen=True)
class DemoTraining:
    """The demo model's size and training: a few minutes on two CPU cores (the tests ask for less)."""

    phantoms: int = 200
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 2e-3
    resolution: int = 32
    width: int = 16
    checkpoint_every: int = 100
    # A grid of four images every this many steps, on the job's page: the model seen learning.
    preview_every: int = 100
    seed: int = 0


def demo_training_ensure(*, training: DemoTraining):
    """Launch the training of the demo's model, or take up the one an earlier demo left; None once trained.

    Run before the demo starts its worker, which is the only worker of the demo: a job
    still queued or running belongs to a demo stopped midway, and is queued again to
    resume from its last checkpoint (its earlier task stands down).
    """
    from generation.models import GenerativeModel, TrainingJob
    from generation.training_jobs import training_cancel, training_launch, training_retry

    from .models import ImageSet

    if GenerativeModel.objects.filter(name=DEMO_MODEL).exists():
        return None
    Status = TrainingJob.Status
    job = TrainingJob.objects.filter(name=DEMO_MODEL).exclude(status=Status.DONE).first()
    if job is None:
        return training_launch(
            name=DEMO_MODEL,
            image_sets=[ImageSet.objects.get(name=DEMO_TRAINING_SET)],
            method=TrainingJob.Method.UNCONDITIONAL,
            steps=training.steps,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            resolution=training.resolution,
            seed=training.seed,
            width=training.width,
            checkpoint_every=training.checkpoint_every,
            preview_every=training.preview_every,
        )
    if job.status in (Status.QUEUED, Status.RUNNING):
        training_cancel(job=job)
    training_retry(job=job)
    job.refresh_from_db()
    return job


DEMO_GENERATION_BATCH = 16


def demo_job():
    """The demo model's latest training job, or None."""
    from generation.models import TrainingJob

    return TrainingJob.objects.filter(name=DEMO_MODEL).first()


def _model_settle(model, job) -> None:
    """Say how the demo's model was made, and make the study's images in one batch (32 px is small)."""
    from generation.services import model_settings_update

    model_settings_update(model=model, batch_size=DEMO_GENERATION_BATCH)
    images = sum(image_set.images.count() for image_set in job.image_sets.all())
    model.description = (
        f"A small unconditional DDPM ({job.resolution} px, UNet width {job.width}) that the demo trained "
        f"on its worker's CPU with training job {job.pk}: {job.steps} steps, batch {job.batch_size}, on "
        f"{images} phantom radiographs of the set {DEMO_TRAINING_SET!r} (drawn by a program, not clinical "
        f"images), none of which is in the demo study."
    )
    model.save(update_fields=["description"])


# --- The study: the trained model against phantoms it never saw -----------------------


DEMO_STUDY = "Demo study: real or synthetic?"
DEMO_STUDY_REAL = 12
DEMO_STUDY_SYNTHETIC = 12
DEMO_INSTRUCTIONS = """Each image is either a **real** radiograph or made by a **generative model**.

Press **R** for real, **F** for fake (synthetic), **U** if unsure. After **F**, say what gave the
image away if you can (keys **1**-**7**) and where (click a point or drag a box on the image), then
**Enter** (alone: nothing given). Zoom with the mouse wheel, pan by dragging, Shift-drag or **W**
for window and level, **0** to reset.

*Demo: the 'real' images are procedural phantoms, and the model is a small one trained for a few
minutes on other phantoms.*"""


def demo_override(audit_report: dict) -> str:
    """The reason recorded when the demo opens its study although the blinding audit warns."""
    return (
        "Demo: the blinding audit warns (" + "; ".join(audit_report.get("problems", [])) + "). The demo's "
        "model is small and trained for minutes on a CPU; its 32-pixel images are enlarged to the readers' "
        "size. Opened anyway, to show the labelling page."
    )


def demo_generation_resume() -> int:
    """Queue again the demo study's generation jobs that a demo stopped midway left unfinished.

    Run before the demo starts its worker, its only worker: a chunk taken from the
    embedded broker by a worker that was stopped is not delivered again. Only the
    images still missing are made. Returns how many jobs were queued again.
    """
    from generation.jobs import job_cancel, job_retry
    from generation.models import GenerationJob

    from .models import Study, StudyModel

    resumed = 0
    waited_on = StudyModel.objects.filter(study__title=DEMO_STUDY, study__status=Study.Status.PREPARING)
    unfinished = GenerationJob.objects.filter(
        pk__in=waited_on.values("job"), status__in=[GenerationJob.Status.QUEUED, GenerationJob.Status.RUNNING]
    )
    for job in unfinished:
        job_cancel(job=job)
        resumed += job_retry(job=job)
    return resumed


def demo_study_advance(*, readers, researcher=None):
    """Take the demo study one step further if it can go; the study, or None while the model trains.

    Called again and again by `manage.py demo` while its web server and worker run
    (never by a page): once the model is registered it makes the study and prepares
    it; the worker generates the model's images and draws the study (as for any
    study); once it is ready, it opens it, with a reason if the audit warns.
    """
    from generation.models import GenerativeModel

    from .lifecycle import study_open, study_prepare
    from .models import ImageSet, Study, StudyModel
    from .services import study_reader_add

    study = Study.objects.filter(title=DEMO_STUDY).first()
    if study is None:
        model = GenerativeModel.objects.filter(name=DEMO_MODEL).first()
        if model is None:
            return None
        if job := model.training_jobs.first():
            _model_settle(model, job)
        study = Study.objects.create(
            title=DEMO_STUDY,
            instructions=DEMO_INSTRUCTIONS,
            real_count=DEMO_STUDY_REAL,
            practice_count=2,
            ask_reasons=Study.AskReasons.FAKE,
            ask_region=Study.AskReasons.FAKE,
            display_check=Study.DisplayCheck.OFFERED,
            break_every_images=25,
        )
        study.real_sets.add(ImageSet.objects.get(name=DEMO_PHANTOM_SET))
        StudyModel.objects.create(study=study, model=model, count=DEMO_STUDY_SYNTHETIC)
        for reader in readers:
            study_reader_add(study=study, reader=reader)
    if study.status == Study.Status.DRAFT:
        study = study_prepare(study=study)
    if study.status == Study.Status.READY:
        report = study.audit_report
        reason = "" if report.get("passed") else demo_override(report)
        study = study_open(study=study, user=researcher, override_reason=reason)
    return study
