"""`python manage.py analyze_csv ANSWERS_CSV --out DIR`: the result files from an answers.csv alone.

The same as `python -m analysis`, which needs no Django at all; no database is read.
"""

from django.core.management.base import BaseCommand, CommandError

from analysis.cli import add_arguments, analyze, progress_bar
from analysis.reads import AnswersError


class Command(BaseCommand):
    help = (
        "Recompute summary.csv, cohen_kappa.csv, arm_comparisons.csv and the iMRMC files from an exported "
        "answers.csv, with no database: the same numbers as the study's export."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, answers, out, model, bootstrap, seed, **options):
        try:
            analyze(
                answers,
                out,
                models=model,
                replicates=bootstrap,
                seed=seed,
                echo=self.stdout.write,
                progress=progress_bar(),
            )
        except AnswersError as exc:
            raise CommandError(f"{answers} cannot be analysed:\n{exc}") from None
        except (OSError, ValueError) as exc:
            raise CommandError(f"{answers}: {exc}") from None
