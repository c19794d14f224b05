"""The address of the client behind nginx, for the login lock-out."""


def forwarded_client_ip(request) -> str | None:
    """The address nginx saw (X-Real-IP), which nginx sets and the client cannot.

    Only used in production, where every request comes through nginx; REMOTE_ADDR
    there is nginx's own address, the same for everyone.
    """
    return request.META.get("HTTP_X_REAL_IP") or request.META.get("REMOTE_ADDR")
