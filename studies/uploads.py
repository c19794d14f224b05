"""Taking files uploaded in the admin into an import job for a worker."""

import secrets
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import get_valid_filename

from .models import ImageSet, ImportJob
from .tasks import run_import_job


def _unique(folder: Path, name: str) -> Path:
    safe = get_valid_filename(Path(name).name) or "file"
    path, n = folder / safe, 1
    while path.exists():
        path, n = folder / f"{Path(safe).stem}-{n}{Path(safe).suffix}", n + 1
    return path


@transaction.atomic
def import_job_create(*, image_set: ImageSet, files, findings=None) -> ImportJob:
    """Save the uploaded files where workers can reach them and queue their import."""
    relative = f"uploads/{secrets.token_hex(16)}"
    folder = settings.MEDIA_ROOT / relative / "files"
    folder.mkdir(parents=True)
    for upload in files:
        with open(_unique(folder, upload.name), "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    if findings is not None:
        with open(folder.parent / "findings.csv", "wb") as out:
            for chunk in findings.chunks():
                out.write(chunk)
    job = ImportJob.objects.create(image_set=image_set, upload_dir=relative)
    run_import_job.delay_on_commit(job.pk)
    return job
