"""`python manage.py generate --model NAME --count N [--seed S] [--wait]`."""

from django.core.management.base import BaseCommand, CommandError

from generation.jobs import job_launch, job_progress
from generation.management.following import job_follow
from generation.models import GenerationJob, GenerativeModel


def progress_line(job: GenerationJob, width: int = 30) -> str:
    p = job_progress(job)
    filled = int(width * p.done / p.total) if p.total else width
    rate = f"{p.per_second:.2f} images/s" if p.per_second else "-- images/s"
    left = f"{int(p.seconds_left) // 60}:{int(p.seconds_left) % 60:02d} left" if p.seconds_left else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} {rate} {left}".rstrip()


class Command(BaseCommand):
    help = "Launch a generation job on the GPU workers; --wait shows its progress until it ends."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--seed", type=int, help="base seed (default: after the last image made)")
        parser.add_argument("--wait", action="store_true", help="show progress; exit 1 if the job fails")

    def handle(self, *args, model, count, seed, wait, **options):
        registered = GenerativeModel.objects.filter(name=model).first()
        if registered is None:
            names = ", ".join(GenerativeModel.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(f"No model named {model!r} (registered: {names}).")
        if not 1 <= count <= 1_000_000:
            raise CommandError("--count must be between 1 and 1000000.")
        job = job_launch(version=registered.current_version, count=count, base_seed=seed)
        self.stdout.write(
            f"Job {job.pk}: {count} images of {job.version}, seeds {job.base_seed}..{job.seeds[-1]}."
        )
        if not wait:
            return
        self.wait(job)

    def wait(self, job: GenerationJob) -> None:
        job_follow(self, job, line=progress_line)
        if job.status != GenerationJob.Status.DONE:
            raise CommandError(f"Job {job.pk} {job.status}: {job.error or 'no error recorded'}")
        self.stdout.write(self.style.SUCCESS(f"Job {job.pk} done."))
