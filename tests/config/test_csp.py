"""The policy built once (config/csp.py) is the one django-csp builds, and what changes it still does."""

import pytest
from csp.constants import HEADER, HEADER_REPORT_ONLY, NONCE, SELF
from csp.decorators import csp_exempt, csp_update
from csp.middleware import CSPMiddleware as DjangoCSPMiddleware
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from config.csp import CSPMiddleware

POLICY = {"DIRECTIVES": {"default-src": ["'self'"], "img-src": ["'self'", "data:"]}}


def through(middleware_class, view=lambda request: HttpResponse("ok"), use_nonce=False):
    def answered(request):
        if use_nonce:
            str(request.csp_nonce)  # as a template's {{ request.csp_nonce }}
        return view(request)

    middleware = middleware_class(answered)
    request = RequestFactory().get("/somewhere/")
    return request, middleware(request)


def test_plain_response_gets_the_header_django_csp_builds():
    request, ours = through(CSPMiddleware)
    _, theirs = through(DjangoCSPMiddleware)
    assert ours[HEADER] == theirs[HEADER]
    assert "default-src 'self'" in ours[HEADER]
    assert (HEADER_REPORT_ONLY in ours) == (HEADER_REPORT_ONLY in theirs)
    # A nonce asked for after the header is written is refused, as django-csp refuses it.
    with pytest.raises(Exception, match="not available after the CSP header"):
        str(request.csp_nonce)


def test_a_changed_setting_changes_the_header():
    before = through(CSPMiddleware)[1][HEADER]
    with override_settings(CONTENT_SECURITY_POLICY=POLICY, CONTENT_SECURITY_POLICY_REPORT_ONLY=POLICY):
        _, response = through(CSPMiddleware)
        _, theirs = through(DjangoCSPMiddleware)
        assert response[HEADER] == theirs[HEADER] != before
        assert "img-src 'self' data:" in response[HEADER]
        assert response[HEADER_REPORT_ONLY] == theirs[HEADER_REPORT_ONLY]
    assert through(CSPMiddleware)[1][HEADER] == before


def test_a_nonce_is_added_to_the_policy():
    policy = {"DIRECTIVES": {"script-src": [SELF, NONCE]}}
    with override_settings(CONTENT_SECURITY_POLICY=policy):
        request, response = through(CSPMiddleware, use_nonce=True)
        assert f"script-src 'self' 'nonce-{request._csp_nonce}'" in response[HEADER]
        assert "nonce" not in through(CSPMiddleware)[1][HEADER]  # no nonce used: none given


def test_per_view_decorators_still_apply():
    updated = csp_update({"img-src": "https://images.example"})(lambda request: HttpResponse("ok"))
    assert "https://images.example" in through(CSPMiddleware, updated)[1][HEADER]
    exempt = csp_exempt()(lambda request: HttpResponse("ok"))
    assert HEADER not in through(CSPMiddleware, exempt)[1]


def test_excluded_prefixes_are_left_to_django_csp():
    policy = {**POLICY, "EXCLUDE_URL_PREFIXES": ["/somewhere/"]}
    with override_settings(CONTENT_SECURITY_POLICY=policy):
        assert HEADER not in through(CSPMiddleware)[1]


def test_a_header_set_by_the_view_is_kept():
    own = lambda request: HttpResponse("ok", headers={HEADER: "default-src 'none'"})  # noqa: E731
    assert through(CSPMiddleware, own)[1][HEADER] == "default-src 'none'"
