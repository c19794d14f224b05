"""`python manage.py train --name NEW --set IMAGESET [--set ...] --method unconditional ... [--wait]`."""

from django.core.management.base import BaseCommand, CommandError

from generation.management.following import job_follow
from generation.models import TrainingJob
from generation.training_jobs import TrainingRefused, training_launch, training_progress
from studies.models import ImageSet


def progress_line(job: TrainingJob, width: int = 30) -> str:
    p = training_progress(job)
    filled = int(width * p.step / p.total) if p.total else width
    loss = f"loss {p.loss:.4f}" if p.loss is not None else "loss --"
    rate = f"{p.per_second:.2f} steps/s" if p.per_second else "-- steps/s"
    left = f"{int(p.seconds_left) // 60}:{int(p.seconds_left) % 60:02d} left" if p.seconds_left else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] step {p.step}/{p.total} {loss} {rate} {left}".rstrip()


class Command(BaseCommand):
    help = (
        "Train a new model from image sets on the GPU workers and register it; "
        "--wait shows its progress until it ends."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="name of the model to create")
        parser.add_argument("--set", dest="sets", action="append", required=True, metavar="IMAGESET")
        parser.add_argument("--method", choices=TrainingJob.Method.values, default="unconditional")
        parser.add_argument("--steps", type=int, required=True)
        parser.add_argument("--batch", type=int, required=True)
        parser.add_argument("--lr", type=float, required=True)
        parser.add_argument("--resolution", type=int, required=True)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--width", type=int, default=32, help="channels of the UNet's first level")
        parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=500)
        parser.add_argument(
            "--mixed-precision",
            dest="mixed_precision",
            choices=TrainingJob.MixedPrecision.values,
            default="no",
        )
        parser.add_argument("--wait", action="store_true", help="show progress; exit 1 if the job fails")

    def handle(self, *args, name, sets, batch, lr, wait, **options):
        image_sets = list(ImageSet.objects.filter(name__in=sets))
        if unknown := sorted(set(sets) - {s.name for s in image_sets}):
            names = ", ".join(ImageSet.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(f"No image set named {unknown[0]!r} (sets: {names}).")
        keys = ["method", "steps", "resolution", "seed", "width", "checkpoint_every", "mixed_precision"]
        try:
            job = training_launch(
                name=name,
                image_sets=image_sets,
                batch_size=batch,
                learning_rate=lr,
                **{key: options[key] for key in keys},
            )
        except TrainingRefused as exc:
            raise CommandError(f"Refused: {exc}.") from None
        self.stdout.write(f"Training job {job.pk}: {job}, on {', '.join(sorted(sets))}.")
        if wait:
            self.wait(job)

    def wait(self, job: TrainingJob) -> None:
        job_follow(self, job, line=progress_line)
        if job.status != TrainingJob.Status.DONE:
            raise CommandError(f"Training job {job.pk} {job.status}: {job.error or 'no error recorded'}")
        self.stdout.write(self.style.SUCCESS(f"Training job {job.pk} done: registered model {job.model}."))
