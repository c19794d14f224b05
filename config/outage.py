"""A database or cache outage answers 503 with Retry-After, and is logged once a minute.

Without this, every request during an outage is a bare 500 with its own traceback in
the log. The labelling page keeps a reader's answer and sends it again after
Retry-After, so an outage costs readers a wait, never an answer.

Two ways in, one answer: the middleware's process_exception for errors raised in a
view, and `server_error` (the 500 handler, see config/urls.py) for the same errors
raised before the view, e.g. loading the session or the user in a middleware.
"""

import logging
import sys
import threading
import time

import redis.exceptions
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.views import defaults

logger = logging.getLogger(__name__)

# What an unreachable database (or Redis cache) raises in a request.
OUTAGE_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
RETRY_AFTER_SECONDS = 2  # an outage answer costs the server nothing: clients may come back soon
LOG_EVERY_SECONDS = 60
# The labelling page's JSON endpoints: their 503 is JSON too, as the page reads it.
JSON_VIEWS = {"study_state", "presentation_answer"}


class _OutageLog:
    """One warning per minute per process, with how many requests it covers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last = None
        self.unlogged = 0

    def note(self, exc: BaseException) -> None:
        with self.lock:
            now = _now()
            if self.last is not None and now - self.last < LOG_EVERY_SECONDS:
                self.unlogged += 1
                return
            also, self.unlogged, self.last = self.unlogged, 0, now
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        more = f" ({also} more requests answered 503 since the last report)" if also else ""
        logger.error(
            "Database or cache unavailable: answering 503 with Retry-After; "
            "next report in %d s at the earliest%s. %s: %s",
            LOG_EVERY_SECONDS,
            more,
            type(exc).__name__,
            reason,
        )


def _now() -> float:
    return time.monotonic()


outage_log = _OutageLog()


def outage_response(request, exc: BaseException) -> HttpResponse:
    outage_log.note(exc)
    match = getattr(request, "resolver_match", None)
    message = "The service is briefly unavailable. Please try again in a few seconds."
    if (match and match.url_name in JSON_VIEWS) or "application/json" in request.headers.get("Accept", ""):
        response = JsonResponse({"error": message, "unavailable": True}, status=503)
    else:
        response = HttpResponse(message + "\n", status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    response._has_been_logged = True  # noted above; Django's request log would add a traceback
    return response


class DatabaseOutageMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, OUTAGE_ERRORS):
            return outage_response(request, exception)
        return None


def server_error(request, template_name=defaults.ERROR_500_TEMPLATE_NAME):
    """The 500 handler: a 503 for an outage met before the view, Django's own page otherwise."""
    exc = sys.exception()
    if isinstance(exc, OUTAGE_ERRORS):
        return outage_response(request, exc)
    return defaults.server_error(request, template_name)
