"""Staff without a study's permission learn nothing from its admin URLs: an existing id and a missing one
answer alike, 404."""

import pytest
from django.contrib.auth.models import Permission

from studies.models import Study

pytestmark = pytest.mark.django_db

MISSING = 987654321
# Every URL under a study in the admin, with the method a browser uses for it.
URLS = {
    "change": ("get", "/admin/studies/study/{pk}/change/"),
    "history": ("get", "/admin/studies/study/{pk}/history/"),
    "delete": ("get", "/admin/studies/study/{pk}/delete/"),
    "readers": ("get", "/admin/studies/study/{pk}/readers/"),
    "results": ("get", "/admin/studies/study/{pk}/results/"),
    "download": ("get", "/admin/studies/study/{pk}/results/answers.csv"),
    "zip": ("get", "/admin/studies/study/{pk}/results/results.zip"),
    "prepare": ("post", "/admin/studies/study/{pk}/prepare/"),
    "back to draft": ("post", "/admin/studies/study/{pk}/back-to-draft/"),
    "open": ("post", "/admin/studies/study/{pk}/open/"),
    "close": ("post", "/admin/studies/study/{pk}/close/"),
    "audit": ("post", "/admin/studies/study/{pk}/audit/"),
    "link": ("post", "/admin/studies/study/{pk}/link/"),
    "remove reader": ("post", "/admin/studies/study/{pk}/remove-reader/"),
}


@pytest.fixture
def staff_without_studies(django_user_model):
    """Staff who may look at generation jobs, say, but not at studies."""
    user = django_user_model.objects.create_user("colleague", password="colleague-pass", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_generationjob"))
    return user


@pytest.mark.parametrize("url", sorted(URLS))
def test_staff_without_permission_get_the_same_404_for_an_existing_and_a_missing_study(
    client, staff_without_studies, url
):
    study = Study.objects.create(title="Realism")
    client.force_login(staff_without_studies)
    method, path = URLS[url]
    existing = getattr(client, method)(path.format(pk=study.pk))
    missing = getattr(client, method)(path.format(pk=MISSING))
    assert (existing.status_code, missing.status_code) == (404, 404)
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT


@pytest.mark.parametrize("url", ["change", "readers", "results"])
def test_a_researcher_still_reaches_every_study_page(client, researcher, url):
    study = Study.objects.create(title="Realism")
    client.force_login(researcher)
    assert client.get(URLS[url][1].format(pk=study.pk)).status_code == 200
