"""Taking files uploaded in the admin into an import job for a worker."""

import json
import re
import secrets
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from config.storage import storage_delete_tree

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
    """Store the uploaded files where workers can reach them and queue their import.

    They go to the storage (a folder or object storage, config/storage.py), under a
    random prefix: a worker on any host reads them from there. If storing fails (a full
    disk, the store away), what was stored is removed and the error is raised.
    """
    relative = f"uploads/{secrets.token_hex(16)}"
    manifest, taken = {}, set()
    try:
        for index, upload in enumerate(files, start=1):
            stored = _stored_name(index, upload.name)
            default_storage.save(f"{relative}/files/{stored}", upload)
            manifest[stored] = _label(upload.name, taken)
        if findings is not None:
            default_storage.save(f"{relative}/findings.csv", findings)
        # The manifest last: an upload without one was never finished.
        default_storage.save(f"{relative}/{MANIFEST}", ContentFile(json.dumps(manifest, indent=1).encode()))
    except BaseException:
        storage_delete_tree(default_storage, relative)
        raise
    job = ImportJob.objects.create(image_set=image_set, upload_dir=relative)
    run_import_job.delay_on_commit(job.pk)
    return job
