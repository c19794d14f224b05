"""`python manage.py audit_blinding STUDY`: could a trait of the files tell real from synthetic?"""

from django.core.management.base import BaseCommand, CommandError

from studies.lifecycle import study_audit
from studies.management.lookup import find_study


class Command(BaseCommand):
    help = (
        "For each trait of the study's image files (file size, dimensions, mode, PNG chunks, "
        "intensity, histogram, noise, sharpness), the AUC with which it alone separates real from "
        "synthetic images. Exits non-zero when a trait reaches the warning level."
    )

    def add_arguments(self, parser):
        parser.add_argument("study", help="the study's id or exact title")

    def handle(self, *args, study, **options):
        study = find_study(study)
        if not study.images.exists():
            raise CommandError(f"The study {study.title!r} has no images yet: prepare it first.")
        report = study_audit(study).as_dict()
        out = self.stdout
        out.write(
            f"Blinding audit of {study.title!r}: {report['n_real']} real, {report['n_synthetic']} synthetic "
            f"images (practice excluded). AUC 0.5 is chance; warning at {report['warn_at']}."
        )
        width = max(len(row["label"]) for row in report["rows"])
        out.write(f"{'trait':<{width}}  {'AUC':>5}  real / synthetic")
        for row in report["rows"]:
            line = f"{row['label']:<{width}}  {row['auc']:5.3f}  {row['real']} / {row['synthetic']}"
            out.write(self.style.ERROR(line + "  WARNING") if row["warn"] else line)
        for problem in report["problems"]:
            out.write(self.style.ERROR(problem))
        if report["note"]:
            out.write(report["note"])
        if not report["passed"]:
            raise CommandError("The audit warns: readers could tell the images apart by a shortcut.")
        out.write(self.style.SUCCESS("No trait alone separates real from synthetic images."))
