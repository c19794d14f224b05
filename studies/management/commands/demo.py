"""`python manage.py demo`: set up the demo, then run the web server and a worker.

The worker trains the demo's model first (a training job, watched in the admin),
and the command, which stays beside its two children, then takes the demo study
through prepare and open as the worker finishes each step; the site answers all
along. Ctrl-C (or SIGTERM) stops both children. If either one stops by itself, the
other is stopped too and the command fails, so a half-running demo is never left
behind.
"""

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from config.celery import worker_command
from generation.models import TrainingJob
from generation.training_jobs import TrainingRefused, training_progress
from studies.demo import (
    DEMO_MODEL,
    DEMO_PHANTOM_COUNT,
    DEMO_PHANTOM_SET,
    DEMO_STUDY,
    DEMO_TRAINING_FIRST_SEED,
    DEMO_TRAINING_PHANTOM_SIZE,
    DEMO_TRAINING_SET,
    DemoTraining,
    demo_accounts_ensure,
    demo_generation_resume,
    demo_job,
    demo_study_advance,
    demo_training_ensure,
)
from studies.models import ImageSet, Study

# How often the command looks at the demo's progress, and prints the training's.
ADVANCE_SECONDS = 1.0
PRINT_SECONDS = 15.0


class Command(BaseCommand):
    help = (
        "Prepare the demo (database, accounts, phantoms, the model's training) "
        "and run the web server and a worker."
    )

    def add_arguments(self, parser):
        default = DemoTraining()
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port for the web server")
        parser.add_argument("--setup-only", action="store_true", help="prepare everything, start nothing")
        parser.add_argument(
            "--training-steps", type=int, default=default.steps,
            help=f"steps of the demo model's training (default {default.steps})",
        )  # fmt: skip
        parser.add_argument(
            "--training-phantoms", type=int, default=default.phantoms,
            help=f"phantoms to train it on (default {default.phantoms})",
        )  # fmt: skip

    def handle(self, *args, addr, setup_only, training_steps, training_phantoms, **options):
        training = DemoTraining(steps=training_steps, phantoms=training_phantoms)
        call_command("migrate", interactive=False, verbosity=0)
        accounts = demo_accounts_ensure(credentials_path=settings.VAR_DIR / "demo_accounts.json")
        self.phantoms_ensure(DEMO_PHANTOM_SET, count=DEMO_PHANTOM_COUNT, seed=0)
        self.phantoms_ensure(
            DEMO_TRAINING_SET,
            count=training.phantoms,
            seed=DEMO_TRAINING_FIRST_SEED,
            size=DEMO_TRAINING_PHANTOM_SIZE,
        )
        try:
            job = demo_training_ensure(training=training)
        except TrainingRefused as refusal:
            raise CommandError(f"The demo model cannot be trained: {refusal}.") from refusal
        demo_generation_resume()
        User = get_user_model()
        self.readers = User.objects.filter(username__in=[a.username for a in accounts if a.role == "reader"])
        self.researcher = User.objects.filter(
            is_staff=True, username__in=[a.username for a in accounts]
        ).first()
        url = f"http://{addr}/"
        out = self.stdout
        out.write("")
        out.write(self.style.SUCCESS(f"Reader study demo: {url}"))
        out.write(f"  Admin for researchers: {url}admin/")
        out.write(f"  Real images: the set {DEMO_PHANTOM_SET!r}, procedural phantoms drawn by a program,")
        out.write(
            "  NOT clinical radiographs. Import your own with: python manage.py import_images --set NAME PATH"
        )
        out.write(f"  Synthetic images: made by the model {DEMO_MODEL!r}, a small DDPM that the worker")
        out.write(f"  trains on the CPU on the {training.phantoms} other phantoms of {DEMO_TRAINING_SET!r}.")
        if job is not None:
            out.write(f"  Watch its training ({job.steps} steps) in the admin:")
            out.write(f"    {url}admin/generation/trainingjob/{job.pk}/change/")
        out.write("  Log in as reader1 or reader2 and open the demo study to label images (R, F, U).")
        out.write("  Accounts (saved in var/demo_accounts.json):")
        for account in accounts:
            out.write(f"    {account.role:<10} {account.username:<10} password: {account.password}")
        out.write("")
        if setup_only:
            return
        out.write("Starting the web server and a Celery worker. Press Ctrl-C to stop both.")
        self.flush()
        self.said, self.printed, self.finished = "", 0.0, False
        self.supervise(
            {
                "web": [sys.executable, "manage.py", "runserver", addr, "--noreload"],
                "worker": worker_command(hostname="demo@%h", beat=True),
            }
        )

    def phantoms_ensure(self, name: str, *, count: int, seed: int, size: int = 1024) -> None:
        existing = ImageSet.objects.filter(name=name).first()
        if existing is None or existing.images.count() < count:
            self.stdout.write(f"Making {count} phantom radiographs for the demo ({name!r})...")
            call_command(
                "make_phantoms", set_name=name, count=count, seed=seed, size=size, stdout=self.stdout
            )

    def flush(self):
        self.stdout.flush()

    def advance(self) -> None:
        """One look at the demo: print the training's progress, move the study on when it can go."""
        if self.finished:
            return
        try:
            study = demo_study_advance(readers=self.readers, researcher=self.researcher)
        except Exception as exc:  # the site stays up; tried again next time (a busy SQLite, say)
            self.say(f"The demo study cannot go on yet: {type(exc).__name__}: {exc}")
            return
        if study is None:
            job = demo_job()
            if job is not None and job.status in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED):
                # Said once; a Retry in the admin (or the next demo) takes it up again.
                self.say(f"The demo model's training {job.status}: {job.error or 'no message'}. "
                         "Retry it in the admin, or run the demo again.")  # fmt: skip
            elif job is not None and time.monotonic() - self.printed >= PRINT_SECONDS:
                self.printed = time.monotonic()
                self.say(training_line(job))
            return
        if study.status == Study.Status.OPEN:
            self.say(opened_line(study))
            self.finished = True  # nothing more to do
        else:
            self.say(
                f"The demo model is trained; the worker makes its images and draws the study "
                f"({study.status})."
            )

    def say(self, line: str) -> None:
        if line != self.said:
            self.said = line
            self.stdout.write(line)
            self.flush()

    def supervise(self, commands: dict[str, list[str]]) -> None:
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        # Each child gets its own session: the terminal's Ctrl-C reaches only this
        # command, which then stops each child exactly once.
        children = {
            name: subprocess.Popen(argv, cwd=settings.BASE_DIR, start_new_session=True)
            for name, argv in commands.items()
        }
        failed = None
        looked = 0.0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    failed = f"The {name} stopped by itself (exit code {child.returncode})."
                    stopping = True
            if not stopping and time.monotonic() - looked >= ADVANCE_SECONDS:
                looked = time.monotonic()
                self.advance()
            time.sleep(0.2)
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 20
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if failed:
            raise CommandError(f"{failed} Stopped the demo; see the messages above.")
        self.stdout.write("Stopped the web server and the worker.")


def training_line(job: TrainingJob) -> str:
    progress = training_progress(job)
    if job.status == TrainingJob.Status.QUEUED or not progress.step:
        return f"Training the demo model: waiting for the worker ({job.steps} steps to go)."
    loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
    left = f", about {progress.seconds_left / 60:.1f} min left" if progress.seconds_left else ""
    return f"Training the demo model: step {progress.step} of {progress.total}{loss}{left}."


def opened_line(study: Study) -> str:
    if study.override_reason:
        audit = (
            "The blinding audit warns, and the demo opened it anyway with this reason: "
            + study.override_reason
        )
    else:
        audit = "The blinding audit found no shortcut."
    return f"The demo study {DEMO_STUDY!r} is open: log in as reader1 or reader2 to label its images. {audit}"
