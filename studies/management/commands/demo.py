"""`python manage.py demo`: set up the demo, then run the web server and a worker.

Ctrl-C (or SIGTERM) stops both. If either one stops by itself, the other is
stopped too and the command fails, so a half-running demo is never left behind.
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
from studies.demo import (
    DEMO_MODEL,
    DEMO_MODEL_IMAGES,
    DEMO_PHANTOM_COUNT,
    DEMO_PHANTOM_SET,
    demo_accounts_ensure,
    demo_model_ensure,
    demo_study_ensure,
)
from studies.models import ImageSet


class Command(BaseCommand):
    help = "Prepare the demo (database, accounts) and run the web server and a Celery worker."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port for the web server")
        parser.add_argument("--setup-only", action="store_true", help="prepare everything, start nothing")

    def handle(self, *args, addr, setup_only, **options):
        call_command("migrate", interactive=False, verbosity=0)
        accounts = demo_accounts_ensure(credentials_path=settings.VAR_DIR / "demo_accounts.json")
        existing = ImageSet.objects.filter(name=DEMO_PHANTOM_SET).first()
        if existing is None or existing.images.count() < DEMO_PHANTOM_COUNT:
            self.stdout.write(f"Making {DEMO_PHANTOM_COUNT} phantom radiographs for the demo...")
            call_command(
                "make_phantoms", set_name=DEMO_PHANTOM_SET, count=DEMO_PHANTOM_COUNT, stdout=self.stdout
            )
        self.stdout.write("Making the demo model's images and the demo study...")
        demo_model_ensure(models_root=settings.MODELS_ROOT)
        readers = get_user_model().objects.filter(
            username__in=[a.username for a in accounts if a.role == "reader"]
        )
        researcher = get_user_model().objects.filter(
            is_staff=True, username__in=[a.username for a in accounts]
        )
        demo_study_ensure(readers=readers, researcher=researcher.first())
        url = f"http://{addr}/"
        out = self.stdout
        out.write("")
        out.write(self.style.SUCCESS(f"Reader study demo: {url}"))
        out.write(f"  Admin for researchers: {url}admin/")
        out.write(f"  Real images: the set {DEMO_PHANTOM_SET!r}, procedural phantoms drawn by a program,")
        out.write(
            "  NOT clinical radiographs. Import your own with: python manage.py import_images --set NAME PATH"
        )
        out.write(f"  Synthetic images: {DEMO_MODEL_IMAGES} made by the model {DEMO_MODEL!r}.")
        out.write("  Its weights are random, so its images are noise.")
        out.write("  Log in as reader1 or reader2 and open the demo study to label images (R, F, U).")
        out.write("  Accounts (saved in var/demo_accounts.json):")
        for account in accounts:
            out.write(f"    {account.role:<10} {account.username:<10} password: {account.password}")
        out.write("")
        if setup_only:
            return
        out.write("Starting the web server and a Celery worker. Press Ctrl-C to stop both.")
        self.flush()
        self.supervise(
            {
                "web": [sys.executable, "manage.py", "runserver", addr, "--noreload"],
                "worker": worker_command(hostname="demo@%h", beat=True),
            }
        )

    def flush(self):
        self.stdout.flush()

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
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    failed = f"The {name} stopped by itself (exit code {child.returncode})."
                    stopping = True
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
