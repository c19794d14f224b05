"""The demo's accounts: one researcher and two readers, with passwords kept in var/.

Passwords are random, made on the first run and saved (mode 0600) so that every
later run prints the same ones and changes nothing that exists.
"""

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

DEMO_PHANTOM_SET = "Demo phantoms (not clinical images)"
DEMO_PHANTOM_COUNT = 24
DEMO_MODEL = "Demo DDPM (random weights)"
DEMO_MODEL_IMAGES = 24

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


def demo_model_ensure(*, models_root: Path):
    """Register the demo's generative model and make its images, once.

    A tiny DDPM with random weights, built here: no model can be downloaded, and
    the app cannot train one yet. Its images are noise, and the demo says so.
    The job's chunks run here rather than on the worker, so that the demo study
    can show them before anyone logs in; later jobs go to the worker as usual.
    """
    from generation.jobs import chunk_run, job_launch
    from generation.models import GenerativeModel
    from generation.services import model_register
    from generation.tiny import build_ddpm

    model = GenerativeModel.objects.filter(name=DEMO_MODEL).first()
    if model is None:
        folder = models_root / "demo-ddpm"
        if not (folder / "model_index.json").exists():
            build_ddpm(folder, size=64)
        model = model_register(
            name=DEMO_MODEL,
            path=str(folder),
            steps=20,
            batch_size=8,
            description="A tiny DDPM with random weights, for the demo: it makes noise, not radiographs.",
        )
    version = model.current_version
    if version.images.count() < DEMO_MODEL_IMAGES:
        job = job_launch(version=version, count=DEMO_MODEL_IMAGES, base_seed=0)
        seeds = list(job.seeds)
        for start in range(0, len(seeds), version.batch_size):
            chunk_run(job_id=job.pk, seeds=seeds[start : start + version.batch_size], attempt=job.attempt)
    return model


DEMO_STUDY = "Demo study: real or synthetic?"
DEMO_STUDY_REAL = 12
DEMO_STUDY_SYNTHETIC = 12
DEMO_OVERRIDE = (
    "Demo: the model has random weights, so its images are noise that the audit rightly tells from "
    "the phantoms. Opened anyway to show the labelling page."
)
DEMO_INSTRUCTIONS = """Each image is either a **real** radiograph or made by a **generative model**.

Press **R** for real, **F** for fake (synthetic), **U** if unsure. Zoom with the mouse wheel, pan by
dragging, Shift-drag for window and level, **0** to reset.

*Demo: the 'real' images are procedural phantoms, and the model has random weights.*"""


def demo_study_ensure(*, readers, researcher=None) -> None:
    """An open study of the demo's phantoms and generated images, for the demo readers.

    It goes through the same life as any study (draft, prepare, ready, open). The
    blinding audit flags the demo, rightly: a random-weight model makes noise, not
    radiographs; it is opened anyway with that reason recorded, as a researcher would.
    """
    from generation.models import GenerativeModel

    from .lifecycle import study_open, study_preparation_check, study_prepare
    from .models import ImageSet, Study, StudyModel
    from .services import study_reader_add

    study = Study.objects.filter(title=DEMO_STUDY).first()
    if study is None:
        study = Study.objects.create(
            title=DEMO_STUDY, instructions=DEMO_INSTRUCTIONS, real_count=DEMO_STUDY_REAL, practice_count=2
        )
        study.real_sets.add(ImageSet.objects.get(name=DEMO_PHANTOM_SET))
        StudyModel.objects.create(
            study=study, model=GenerativeModel.objects.get(name=DEMO_MODEL), count=DEMO_STUDY_SYNTHETIC
        )
    for reader in readers:
        study_reader_add(study=study, reader=reader)
    if study.status == Study.Status.DRAFT:
        study = study_prepare(study=study)
    if study.status == Study.Status.PREPARING:
        study = study_preparation_check(study=study)
    if study.status == Study.Status.READY:
        study_open(study=study, user=researcher, override_reason=DEMO_OVERRIDE)
