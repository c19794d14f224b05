"""What the workers are doing now, and how much waits in each queue: for researchers and operators.

Read from the broker when the page is shown (a broadcast asking the workers, and the
queues' lengths); nothing is written, and a broker or worker that does not answer in
time is shown as such, never as an error page.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.urls import NoReverseMatch, reverse

from config.celery import app as celery_app

QUEUES = ("gpu", "default")
ANSWER_SECONDS = 1.0


@dataclass
class Task:
    what: str
    link: str = ""  # the admin page of the job it works for
    started: datetime | None = None


@dataclass
class Worker:
    hostname: str
    queues: list[str]
    tasks: list[Task] = field(default_factory=list)


def _link(name: str, pk) -> str:
    try:
        return reverse(name, args=[int(pk)])
    except (NoReverseMatch, TypeError, ValueError):
        return ""


def _describe(task: dict) -> Task:
    name, args = task.get("name", ""), task.get("args") or []
    started = task.get("time_start")
    when = datetime.fromtimestamp(started, tz=UTC) if started else None
    short = name.rsplit(".", 1)[-1]
    if short == "generate_chunk" and len(args) >= 2 and args[1]:
        seeds = args[1]
        return Task(
            f"generation job {args[0]}: seeds {seeds[0]} to {seeds[-1]}",
            _link("admin:generation_generationjob_change", args[0]),
            when,
        )
    if short == "train" and args:
        return Task(f"training job {args[0]}", _link("admin:generation_trainingjob_change", args[0]), when)
    if short == "run_import_job" and args:
        return Task(f"import job {args[0]}", _link("admin:studies_importjob_change", args[0]), when)
    if short == "preparation_advance" and args:
        return Task(f"preparing study {args[0]}", _link("admin:studies_study_change", args[0]), when)
    return Task(short.replace("_", " ") or "a task", "", when)


def workers_now(timeout: float = ANSWER_SECONDS) -> list[Worker] | None:
    """Every worker that answers within `timeout`, with its queues and running tasks; None if
    the broker cannot be reached."""
    try:
        inspect = celery_app.control.inspect(timeout=timeout)
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
    except Exception:  # the broker is away: the page says so
        return None
    workers = []
    for hostname in sorted(set(queues) | set(active)):
        workers.append(
            Worker(
                hostname=hostname,
                queues=sorted(q["name"] for q in queues.get(hostname, [])),
                tasks=[_describe(t) for t in active.get(hostname, [])],
            )
        )
    return workers


def queue_lengths() -> dict[str, int | None]:
    """Messages waiting in each queue (not those a worker holds); None where it cannot be read."""
    lengths: dict[str, int | None] = {}
    try:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            for queue in QUEUES:
                # A channel each: RabbitMQ closes the channel of a passive declare that fails.
                channel = conn.channel()
                try:
                    lengths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # a queue the broker has not made yet holds nothing
                    lengths[queue] = 0
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass
    except Exception:
        return {queue: None for queue in QUEUES}
    return lengths
