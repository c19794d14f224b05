"""/healthz: is the database up, the broker reachable, and does a worker answer?

For load balancers and monitors, so it needs no login. It names what is down but
never how it is configured (no URLs, hosts or passwords).
"""

from django.contrib.auth.decorators import login_not_required
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


CHECKS = {"database": check_database, "broker": check_broker, "worker": check_worker}


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
