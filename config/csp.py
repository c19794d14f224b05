"""django-csp's middleware, with the policy built once instead of on every response.

django-csp builds the Content-Security-Policy header from the settings on every response
(a few dictionaries walked and joined: about 4% of a labelling request). Here a response
that changes nothing of the policy (no nonce used, no per-view decorator, no excluded
prefix) gets the header built once per process and kept until the setting changes; every
other response goes through django-csp as it is.
"""

import functools

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as BaseCSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# What csp.decorators set on a response to change its policy, or to drop it.
PER_RESPONSE = (
    "_csp_config",
    "_csp_update",
    "_csp_replace",
    "_csp_exempt",
    "_csp_config_ro",
    "_csp_update_ro",
    "_csp_replace_ro",
    "_csp_exempt_ro",
)
SETTINGS = ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY")


@functools.cache
def plain_headers() -> tuple[tuple[str, str], ...] | None:
    """The headers of a response that changes nothing, or None where a prefix is excluded."""
    for name in SETTINGS:
        if (getattr(settings, name, None) or {}).get("EXCLUDE_URL_PREFIXES"):
            return None  # per path: left to django-csp
    built = ((HEADER, build_policy()), (HEADER_REPORT_ONLY, build_policy(report_only=True)))
    return tuple((header, value) for header, value in built if value)


@receiver(setting_changed)
def _forget(*, setting, **kwargs):
    if setting in SETTINGS or setting == "DEBUG":
        plain_headers.cache_clear()


class CSPMiddleware(BaseCSPMiddleware):
    def process_response(self, request, response):
        headers = plain_headers()
        if (
            headers is None
            or settings.DEBUG  # django-csp leaves Django's debug pages alone
            or getattr(request, "_csp_nonce", None) is not None
            or any(hasattr(response, name) for name in PER_RESPONSE)
        ):
            return super().process_response(request, response)
        for header, value in headers:
            if header not in response:
                response[header] = value
        # As django-csp: a nonce asked for after the header is written is an error, not a no-op.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response
