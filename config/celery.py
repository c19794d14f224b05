"""The Celery app: two queues, late acks, no result backend.

Workers start with `celery -A config worker -Q gpu,default`. Generation (and later
training) runs on the `gpu` queue so that GPU hosts consume only that queue; the rest
goes to `default`. Job state lives in database rows, never in a result backend.
Periodic work runs on the beat schedule below: exactly one `celery -A config beat`
(or, in the demo, its worker's `-B`).
"""

import os
import sys

from celery import Celery
from celery.signals import celeryd_init
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")


def configure(app: Celery) -> None:
    from django.conf import settings

    broker_url = settings.CELERY_BROKER_URL
    transport_options: dict = {"visibility_timeout": settings.CELERY_BROKER_VISIBILITY_TIMEOUT}
    if broker_url.startswith("filesystem://"):
        # The embedded broker: messages are files under var/broker, so `make demo`
        # needs no broker server. Fanout (control_folder) lets /healthz ping workers.
        root = settings.CELERY_BROKER_DIR
        folders = {
            "data_folder_in": root / "queue",
            "data_folder_out": root / "queue",
            "processed_folder": root / "processed",
            "control_folder": root / "control",
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        transport_options.update({k: str(v) for k, v in folders.items()}, store_processed=False)
        # It polls its folder for new messages (Redis and RabbitMQ push them): poll
        # often enough that a worker does not sit idle between short tasks.
        transport_options["polling_interval"] = 0.1

    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue="default",
        task_queues=[Queue("default"), Queue("gpu")],
        # An exact name wins over the pattern: the sweep only reads and writes rows.
        task_routes={
            "generation.tasks.sweep_jobs": {"queue": "default"},
            "generation.tasks.*": {"queue": "gpu"},
        },
        # A task is acknowledged only when it has finished, and handed to another
        # worker if its worker dies: tasks are written to be safe to run twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        task_time_limit=settings.CELERY_TASK_TIME_LIMIT,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_always_eager=settings.CELERY_TASK_ALWAYS_EAGER,
        timezone=settings.TIME_ZONE,
        # State moves in the background, never in a page's GET. Reader links need no
        # entry: they are Django password-reset tokens, which carry their own time and
        # expire by themselves.
        beat_schedule={
            "sweep-stuck-generation-jobs": {
                "task": "generation.tasks.sweep_jobs",
                "schedule": settings.CELERY_BEAT_SECONDS,
            },
            # A safety net: a job's end already advances its studies (studies.tasks).
            "advance-preparing-studies": {
                "task": "studies.tasks.preparations_advance",
                "schedule": settings.CELERY_BEAT_SECONDS,
            },
        },
        # Beat remembers its last runs here, not in whatever folder it was started from.
        beat_schedule_filename=str(settings.VAR_DIR / "celerybeat-schedule"),
    )


app.on_configure.connect(lambda sender, **kwargs: configure(sender), weak=False)
app.autodiscover_tasks()


@celeryd_init.connect
def check_connections(**kwargs) -> None:
    """Workers check a kept database connection before each task's first query, whatever
    DATABASE_CONN_HEALTH_CHECKS says (it is for web processes): a task that failed on a
    connection the database dropped would fail its job, where a web request is sent again."""
    from django.db import connections

    for conn in connections.all(initialized_only=False):
        conn.settings_dict["CONN_HEALTH_CHECKS"] = True
        conn.health_check_enabled = True


def worker_command(*, hostname: str = "", loglevel: str = "INFO", beat: bool = False) -> list[str]:
    """The command line of one worker on both queues, one process: for the demo, tests, benchmarks.

    With `beat`, it also runs the beat schedule (`-B`): right for one worker, as in the
    demo; a deployment runs one `celery -A config beat` instead.
    """
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        "gpu,default",
        "--concurrency",
        "1",
    ]
    if hostname:
        command += ["--hostname", hostname]
    if beat:
        command.append("-B")
    return [*command, "--loglevel", loglevel]
