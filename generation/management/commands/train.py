"""`python manage.py train --name NEW --set IMAGESET [--set ...] --method {unconditional,lora,full}
[--base MODEL] ... [--wait]`."""

from django.core.management.base import BaseCommand, CommandError

from generation.management.following import job_follow
from generation.models import GenerativeModel, TrainingJob
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
        parser.add_argument("--base", metavar="MODEL", help="lora, full: the registered model to start from")
        parser.add_argument("--ema", action="store_true", help="keep (and save) a moving average of weights")
        parser.add_argument(
            "--snr-gamma", dest="snr_gamma", type=float, metavar="G", help="Min-SNR weighting (5 is usual)"
        )
        parser.add_argument("--rank", type=int, default=4, metavar="R", help="lora: the adapter's rank")
        parser.add_argument(
            "--prompt-template",
            dest="prompt_template",
            default="chest x-ray, {finding}",
            metavar="T",
            help="lora and full: each image's prompt, from its finding",
        )
        parser.add_argument(
            "--train-text-encoder", dest="train_text_encoder", action="store_true", help="full: train it too"
        )
        parser.add_argument(
            "--preview-every", dest="preview_every", type=int, default=0, metavar="K",
            help="a grid of 4 preview images every K steps and at the end (0: none)",
        )  # fmt: skip
        parser.add_argument("--wait", action="store_true", help="show progress; exit 1 if the job fails")

    def handle(self, *args, name, sets, batch, lr, wait, base, **options):
        image_sets = list(ImageSet.objects.filter(name__in=sets))
        if unknown := sorted(set(sets) - {s.name for s in image_sets}):
            names = ", ".join(ImageSet.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(f"No image set named {unknown[0]!r} (sets: {names}).")
        base_model = None
        if base is not None:
            base_model = GenerativeModel.objects.filter(name=base).first()
            if base_model is None:
                names = ", ".join(GenerativeModel.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"No model named {base!r} is registered (models: {names}).")
        keys = [
            "method", "steps", "resolution", "seed", "width", "checkpoint_every", "mixed_precision", "ema",
            "snr_gamma", "rank", "prompt_template", "train_text_encoder", "preview_every",
        ]  # fmt: skip
        try:
            job = training_launch(
                name=name,
                image_sets=image_sets,
                batch_size=batch,
                learning_rate=lr,
                base=base_model,
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
