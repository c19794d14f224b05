"""`python manage.py export_results STUDY --out DIR`: answers.csv and every result file of a study."""

from django.core.management.base import BaseCommand, CommandError

from analysis.cli import add_bootstrap_arguments, progress_bar
from analysis.reads import AnswersError
from studies.exports import export_to_folder
from studies.management.lookup import find_study


class Command(BaseCommand):
    help = (
        "Write a study's answers.csv, summary.csv, cohen_kappa.csv, arm_comparisons.csv and the iMRMC files "
        "(and a README.txt saying how to recompute them) into a folder."
    )

    def add_arguments(self, parser):
        parser.add_argument("study", help="the study's id or exact title")
        parser.add_argument("--out", required=True, help="folder for the files (made if missing)")
        add_bootstrap_arguments(parser)
        parser.add_argument(
            "--include-removed",
            action="store_true",
            help="count the answers of readers removed from the study (left out by default)",
        )

    def handle(self, *args, study, out, bootstrap, seed, include_removed, **options):
        study = find_study(study)
        self.stdout.write(f"Exporting the results of {study.title!r} (id {study.pk}, {study.status})...")
        try:
            paths = export_to_folder(
                study,
                out,
                replicates=bootstrap,
                seed=seed,
                progress=progress_bar(),
                include_removed=include_removed,
            )
        except (AnswersError, ValueError) as exc:
            raise CommandError(f"The answers of this study cannot be analysed: {exc}") from None
        except OSError as exc:
            raise CommandError(f"Cannot write into {out}: {exc}") from None
        for path in paths:
            self.stdout.write(f"wrote {path}")
        if study.status != study.Status.CLOSED:
            self.stdout.write(self.style.WARNING("The study is not closed: these are interim results."))
