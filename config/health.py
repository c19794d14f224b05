"""/healthz: is the database up, the broker reachable, the storage answering, does a worker
answer, and do jobs move?

For load balancers and monitors, so it needs no login. It names what is down but
never how it is configured (no URLs, hosts or passwords), and names stalled jobs by
kind and number only.

Stalled jobs make the answer "degraded", still 200: the web servers are fine, and a
503 would have a load balancer take every one of them out of service for a job.
"""

import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection
from django.db.models.functions import Coalesce
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from generation.jobs import silent_jobs, waiting_tasks
from generation.models import GenerationJob, TrainingJob

from .celery import app as celery_app

WORKER_PING_TIMEOUT = 1.0
ACTIVE = [GenerationJob.Status.QUEUED, GenerationJob.Status.RUNNING]


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def check_broker() -> str:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
    return "ok"


def check_worker() -> str:
    replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT)
    if not replies:
        raise RuntimeError(f"no worker answered within {WORKER_PING_TIMEOUT:g} s")
    return f"ok: {len(replies)} worker(s)"


def check_storage() -> str:
    """The store answers and takes this app's keys (a read; /healthz writes nothing)."""
    default_storage.exists("healthz-probe")  # forces the lazy storage; raises if it cannot answer
    storage = default_storage._wrapped
    if isinstance(storage, FileSystemStorage):
        folder = Path(storage.location)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise RuntimeError("the media folder is not a writable folder")
        return "ok: filesystem"
    return "ok: object storage"


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "worker": check_worker,
    "storage": check_storage,
}


def run_checks() -> dict[str, tuple[bool, str]]:
    results = {}
    for name, check in CHECKS.items():
        if name == "worker" and not results["broker"][0]:
            results[name] = (False, "not checked: the broker is down")
            continue
        try:
            results[name] = (True, check())
        except Exception as exc:  # any failure of a dependency is a 'down', never a 500
            results[name] = (False, str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__)
    return results


def stalled_jobs() -> list[str]:
    """Generation and training jobs that nothing moves, e.g. "generation job 12 (silent 412 s)".

    A job is silent when no worker has touched it for its silence period
    (GENERATION_SILENCE_SECONDS, TRAINING_SILENCE_SECONDS) and one more run of beat's sweep,
    which would have sent or resumed it by then. A silent job is only waiting its turn while
    tasks wait in the `gpu` queue and workers are busy on other jobs; it is stalled when the
    queue is empty (the sweep did not act: is beat running?) or when no job at all moves
    (no worker takes from the queue).
    """
    now = timezone.now()
    grace = settings.CELERY_BEAT_SECONDS
    training_silence = settings.TRAINING_SILENCE_SECONDS
    generation = silent_jobs(settings.GENERATION_SILENCE_SECONDS + grace)
    training = TrainingJob.objects.annotate(last_sign=Coalesce("heartbeat", "created")).filter(
        status__in=ACTIVE, last_sign__lt=now - timedelta(seconds=training_silence + grace)
    )
    silent = [
        (f"{kind} job {pk}", last)
        for kind, jobs in (("generation", generation), ("training", training))
        for pk, last in jobs.order_by("pk").values_list("pk", "last_sign")
    ]
    if not silent:
        return []
    moving = (
        GenerationJob.objects.filter(
            status__in=ACTIVE, heartbeat__gte=now - timedelta(seconds=settings.GENERATION_SILENCE_SECONDS)
        ).exists()
        or TrainingJob.objects.filter(
            status__in=ACTIVE, heartbeat__gte=now - timedelta(seconds=training_silence)
        ).exists()
    )
    if moving and waiting_tasks():
        return []
    return [f"{name} (silent {(now - last).total_seconds():.0f} s)" for name, last in silent]


@login_not_required
@require_GET
@never_cache
def healthz(request):
    results = run_checks()
    down = [name for name, (ok, _) in results.items() if not ok]
    stalled = []
    if results["database"][0]:
        stalled = stalled_jobs()
        results["jobs"] = (True, f"stalled: {', '.join(stalled)}" if stalled else "ok")
    else:
        results["jobs"] = (True, "not checked: the database is down")
    body = {
        "status": "down" if down else "degraded" if stalled else "ok",
        "down": down,
        "stalled": stalled,
        "checks": {name: detail for name, (_, detail) in results.items()},
    }
    return JsonResponse(body, status=503 if down else 200)
