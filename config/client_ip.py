"""The address of the client behind nginx, for the login lock-out."""

from django.conf import settings


def forwarded_client_ip(request) -> str | None:
    """The address nginx saw (X-Real-IP), believed only when nginx itself sent the request.

    Only used in production, where every request comes through nginx; REMOTE_ADDR
    there is nginx's own address, the same for everyone. A request from anywhere
    else could write any X-Real-IP it likes (and so dodge the lock-out): its own
    address counts.
    """
    remote = request.META.get("REMOTE_ADDR")
    if remote in settings.TRUSTED_PROXIES:
        return request.META.get("HTTP_X_REAL_IP") or remote
    return remote
