"""The Content-Security-Policy holds on every page, and the pages still work under it, in Chromium.

Any violation (an inline script or style element, a third-party origin) fails the test:
the page reports it as a `securitypolicyviolation` event and on the console.
"""

import re

import pytest
from playwright.sync_api import expect

from studies.models import Answer, StudyReader
from tests.studies.study_fixtures import make_open_study
from tests.studies.test_results_browser import RESULTS_PLOTS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

REPORT = """document.addEventListener('securitypolicyviolation', (e) => console.error(
  `CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} in ${e.sourceFile}`));"""


def watched(tab):
    """The tab, collecting every CSP violation (event or console report) into tab.violations."""
    tab.violations = []
    tab.context.add_init_script(REPORT)
    tab.page.on(
        "console",
        lambda message: (
            message.type == "error"
            and re.search("Content.Security.Policy|CSP violation", message.text)
            and tab.violations.append(message.text)
        ),
    )
    return tab


def admin_login(tab):
    tab.page.goto(tab.base_url + "/admin/login/")
    tab.page.get_by_label("Username").fill("researcher")
    tab.page.get_by_label("Password").fill("researcher-pass")
    tab.page.get_by_role("button", name="Log in").click()
    expect(tab.page).to_have_url(tab.base_url + "/admin/")


def test_every_page_sends_the_policy(client, researcher):
    client.force_login(researcher)
    for path in ("/accounts/login/", "/admin/login/", "/admin/studies/study/", "/healthz"):
        header = client.get(path)["Content-Security-Policy"]
        policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
        assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == policy["object-src"] == "'none'"
        unsafe = [name for name, sources in policy.items() if "unsafe" in sources]
        assert unsafe == ["style-src-attr"]  # inline style attributes only, never scripts


def test_a_reader_labels_images_under_the_policy(tabs, reader):
    study = make_open_study(reader, images=4)
    tab = watched(tabs())
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    for key in ["r", "f", "u"]:
        tab.wait_ready()
        tab.page.keyboard.press(key)
    tab.wait_ready()
    assert Answer.objects.filter(presentation__study=study, presentation__reader=reader).count() == 3
    assert tab.violations == []


def test_the_study_admin_and_results_pages_work_under_the_policy(tabs, reader, outsider, researcher):
    study = make_open_study(reader, images=4, readers=[outsider])
    for person, password in ((reader, "reader-pass"), (outsider, "outsider-pass")):
        tab = watched(tabs())
        tab.log_in(person.username, password)
        tab.open_study(study)
        for key in ["r", "f", "f", "r"]:
            tab.wait_ready()
            tab.page.keyboard.press(key)
        expect(tab.page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
        assert tab.violations == []

    tab = watched(tabs(viewport={"width": 1400, "height": 900}))
    admin_login(tab)
    page = tab.page
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    expect(page.get_by_role("heading", name="Study status")).to_be_visible()
    page.goto(f"{tab.base_url}/admin/studies/study/add/")  # filter_horizontal and the models inline
    expect(page.locator("#id_real_sets_from")).to_be_visible()
    page.locator(".add-row a").click()  # inlines.js adds a second model row
    expect(page.locator("#arms-1")).to_be_attached()
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/results/")
    for name in RESULTS_PLOTS:
        expect(page.get_by_role("img", name=re.compile(name))).to_be_visible()
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/readers/")
    expect(page.get_by_role("heading", name="Readers of this study")).to_be_visible()
    assert tab.violations == []


def test_a_researcher_removes_a_reader_who_then_reaches_nothing(tabs, reader, researcher):
    study = make_open_study(reader, images=3)
    reading = watched(tabs())
    reading.log_in("reader", "reader-pass")
    reading.open_study(study)
    image_url = reading.images[0]  # the image the page fetched

    tab = watched(tabs())
    admin_login(tab)
    page = tab.page
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/readers/")
    page.get_by_role("button", name="Remove reader").click()
    expect(page.get_by_role("heading", name=re.compile(r"Remove reader \(R001\)"))).to_be_visible()
    assert StudyReader.objects.get(study=study, reader=reader).removed is None  # not before confirming
    page.get_by_role("button", name="Yes, remove reader").click()
    expect(page.get_by_text("reader is removed from the study")).to_be_visible()
    assert StudyReader.objects.get(study=study, reader=reader).removed is not None
    assert tab.violations == []

    gone = reading.page.goto(f"{reading.base_url}/study/{study.pk}/")
    assert gone.status == 404
    assert reading.page.request.get(reading.base_url + image_url).status == 404
    csrf = next(c["value"] for c in reading.context.cookies() if c["name"] == "csrftoken")
    answer_url = image_url.removesuffix("/image") + "/answer"
    posted = reading.page.request.post(
        reading.base_url + answer_url,
        form={"label": "real", "viewing_ms": "10"},
        headers={"X-CSRFToken": csrf},
    )
    assert posted.status == 404
    assert not Answer.objects.filter(presentation__study=study).exists()
