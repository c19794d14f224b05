"""/healthz: is the database up, the broker reachable, the storage answering, and does a worker answer?

For load balancers and monitors, so it needs no login. It names what is down but
never how it is configured (no URLs, hosts or passwords).
"""

import os
from pathlib import Path

from django.contrib.auth.decorators import login_not_required
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .celery import app as celery_app

WORKER_PING_TIMEOUT = 1.0


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


@login_not_required
@require_GET
@never_cache
def healthz(request):
    results = run_checks()
    down = [name for name, (ok, _) in results.items() if not ok]
    body = {
        "status": "down" if down else "ok",
        "down": down,
        "checks": {name: detail for name, (_, detail) in results.items()},
    }
    return JsonResponse(body, status=503 if down else 200)
