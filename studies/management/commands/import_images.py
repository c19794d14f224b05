"""`python manage.py import_images --set NAME PATH [PATH ...]`: real radiographs into a set."""

from django.core.management.base import BaseCommand, CommandError

from analysis.cells import formula_refusal
from studies.imports import images_import, load_findings, sources_from_paths
from studies.models import ImageSet, ImportResult

Status = ImportResult.Status


class Command(BaseCommand):
    help = (
        "Import real radiographs (DICOM, PNG, JPEG, TIFF) from files, folders (recursively) "
        "and .zip archives into an image set, creating the set if needed. Prints one line "
        "per file and exits non-zero if any file was refused."
    )

    def add_arguments(self, parser):
        parser.add_argument("--set", dest="set_name", required=True, help="name of the image set")
        parser.add_argument("paths", nargs="+", metavar="PATH", help="a file, a folder or a .zip")
        parser.add_argument("--findings", metavar="CSV", help="CSV with columns 'file' and 'finding'")

    def handle(self, *args, set_name, paths, findings, **options):
        try:
            finding_map = load_findings(findings) if findings else {}
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        problem = formula_refusal(set_name, "An image set's name")
        if problem and not ImageSet.objects.filter(name=set_name).exists():
            raise CommandError(problem)
        image_set, created = ImageSet.objects.get_or_create(name=set_name)
        if created:
            self.stdout.write(f"Created the image set {set_name!r}.")
        counts = dict.fromkeys(Status.values, 0)
        for outcome in images_import(
            image_set=image_set, sources=sources_from_paths(paths), findings=finding_map
        ):
            counts[outcome.status] += 1
            if outcome.status == Status.IMPORTED:
                note = f" (note: {outcome.reason})" if outcome.reason else ""
                self.stdout.write(f"imported   {outcome.name}{note}")
            elif outcome.status == Status.DUPLICATE:
                self.stdout.write(f"duplicate  {outcome.name} ({outcome.reason})")
            else:
                self.stdout.write(self.style.ERROR(f"refused    {outcome.name}: {outcome.reason}"))
        summary = (
            f"{counts['imported']} imported, {counts['duplicate']} duplicate, "
            f"{counts['refused']} refused; the set {set_name!r} now has {image_set.images.count()} images."
        )
        if counts["refused"]:
            raise CommandError(summary, returncode=1)
        self.stdout.write(self.style.SUCCESS(summary))
