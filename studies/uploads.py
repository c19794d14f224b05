"""Taking files uploaded in the admin into an import job for a worker."""

import json
import re
import secrets
from pathlib import Path

from django.conf import settings
from django.db import transaction

from .imports import MANIFEST
from .models import ImageSet, ImportJob
from .tasks import run_import_job

SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


def _stored_name(index: int, original: str) -> str:
    # Stored under an index: no name an uploader chose ever becomes a path. The
    # suffix stays, because a .zip is read as an archive.
    suffix = Path(original).suffix.lower()
    if not SAFE_SUFFIX.fullmatch(suffix):
        suffix = ""
    return f"{index:05d}{suffix}"


def _label(original: str, taken: set[str]) -> str:
    label, n = original or "unnamed", 2
    while label in taken:  # two uploads of the same name keep two results
        label, n = f"{original} ({n})", n + 1
    taken.add(label)
    return label


@transaction.atomic
def import_job_create(*, image_set: ImageSet, files, findings=None) -> ImportJob:
    """Save the uploaded files where workers can reach them and queue their import."""
    relative = f"uploads/{secrets.token_hex(16)}"
    folder = settings.MEDIA_ROOT / relative / "files"
    folder.mkdir(parents=True)
    manifest, taken = {}, set()
    for index, upload in enumerate(files, start=1):
        stored = _stored_name(index, upload.name)
        with open(folder / stored, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        manifest[stored] = _label(upload.name, taken)
    (folder.parent / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if findings is not None:
        with open(folder.parent / "findings.csv", "wb") as out:
            for chunk in findings.chunks():
                out.write(chunk)
    job = ImportJob.objects.create(image_set=image_set, upload_dir=relative)
    run_import_job.delay_on_commit(job.pk)
    return job
