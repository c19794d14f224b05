"""The admin's import page in Chromium: an upload of too many files gets the page's own message."""

import pytest
from playwright.sync_api import expect, sync_playwright

from studies.models import ImageSet, ImportJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture(scope="module")
def chromium():
    # Playwright's sync API runs an event loop in this thread; the tests' own ORM calls stay
    # synchronous and safe. Allowed until Playwright has stopped, for these tests only.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server):
    context = chromium.new_context()
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def test_too_many_files_chosen_in_chromium_get_the_pages_message(page, live_server, researcher, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    image_set = ImageSet.objects.create(name="chosen in the browser")
    page.goto(f"{live_server.url}/admin/login/?next=/admin/studies/imageset/{image_set.pk}/import/")
    page.get_by_label("Username").fill("researcher")
    page.get_by_label("Password").fill("researcher-pass")
    page.get_by_role("button", name="Log in").click()
    files = [{"name": f"cxr_{n}.png", "mimeType": "image/png", "buffer": b"not looked at"} for n in range(4)]
    page.locator('input[type="file"][name="files"]').set_input_files(files)
    page.get_by_role("button", name="Upload and import").click()
    expect(page.get_by_text("At most 3 files in one upload; put them in a .zip")).to_be_visible()
    expect(page.locator('input[type="file"][name="files"]')).to_be_visible()
    assert not ImportJob.objects.exists()
