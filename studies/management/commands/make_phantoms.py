"""`python manage.py make_phantoms --set NAME --count N`: procedural chest phantoms.

For demos and tests only: they are drawn by a program, not taken of a patient.
They are written as 16-bit PNG and as DICOM (MONOCHROME2 and MONOCHROME1), then
imported like any researcher's files, so the whole import path is exercised.
"""

import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from config.storage import storage_error_text, storage_errors
from studies.imaging.phantoms import phantom, write_dicom, write_png16
from studies.imports import Source, images_import
from studies.models import ImageSet, ImportResult

WRITERS = [
    ("png", lambda path, image, seed: write_png16(path, image)),
    ("dcm", lambda path, image, seed: write_dicom(path, image, seed=seed)),
    ("dcm", lambda path, image, seed: write_dicom(path, image, seed=seed, monochrome1=True)),
]


def phantom_files_write(folder: Path, *, count: int, first_seed: int = 0, size: int = 1024) -> list[Path]:
    """Write `count` phantom files to `folder`, cycling through the three formats."""
    paths = []
    for index in range(count):
        seed = first_seed + index
        extension, write = WRITERS[index % len(WRITERS)]
        path = folder / f"phantom_{seed:05d}.{extension}"
        write(path, phantom(seed, size), seed)
        paths.append(path)
    return paths


class Command(BaseCommand):
    help = "Make procedural chest-radiograph phantoms (not clinical images) and import them into a set."

    def add_arguments(self, parser):
        parser.add_argument("--set", dest="set_name", required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--seed", type=int, default=0, help="seed of the first phantom")
        parser.add_argument("--size", type=int, default=1024, help="side in pixels (default 1024)")
        parser.add_argument("--out", help="only write the files to this folder; import nothing")

    def handle(self, *args, set_name, count, seed, size, out, **options):
        if not 1 <= count <= 100_000:
            raise CommandError("--count must be between 1 and 100000")
        if not 256 <= size <= 8192:
            raise CommandError("--size must be between 256 and 8192 pixels")
        if out:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            phantom_files_write(folder, count=count, first_seed=seed, size=size)
            self.stdout.write(f"Wrote {count} phantom files to {folder}.")
            return
        image_set, _ = ImageSet.objects.get_or_create(
            name=set_name,
            defaults={"description": "Procedural phantoms drawn by a program: not clinical images."},
        )
        with tempfile.TemporaryDirectory(prefix="phantoms-") as tmp:
            paths = phantom_files_write(Path(tmp), count=count, first_seed=seed, size=size)
            sources = [Source(path.name, path.read_bytes) for path in paths]
            outcomes = []
            try:
                for outcome in images_import(image_set=image_set, sources=sources):
                    outcomes.append(outcome)
            except (*storage_errors(), DatabaseError) as exc:
                imported = sum(o.status == ImportResult.Status.IMPORTED for o in outcomes)
                raise CommandError(
                    f"The import stopped after {imported} of {count} phantoms were imported into "
                    f"{set_name!r}: {storage_error_text(exc)} ({type(exc).__name__}). Run the same command "
                    "again once that is fixed: phantoms already imported are skipped."
                ) from exc
        counts = {s: sum(o.status == s for o in outcomes) for s in ImportResult.Status.values}
        for outcome in outcomes:
            if outcome.status == ImportResult.Status.REFUSED:
                self.stderr.write(f"refused {outcome.name}: {outcome.reason}")
        self.stdout.write(
            f"Phantoms (not clinical images) in {set_name!r}: {counts['imported']} imported, "
            f"{counts['duplicate']} already there, {counts['refused']} refused."
        )
        if counts["refused"]:
            raise CommandError("Some phantoms were refused; see above.")
