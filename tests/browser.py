"""Browser fixtures for the tests that drive Debian's Chromium with Playwright.

Registered for the whole suite by tests/conftest.py (`pytest_plugins`): a test asks
for `tabs` (or `browser`) and gets a live server and a fresh browser context per tab.
"""

import pytest
from playwright.sync_api import expect, sync_playwright


@pytest.fixture(scope="module")
def allow_orm_beside_playwright():
    """Playwright's sync API runs an event loop in this thread; the tests' own ORM
    calls are still synchronous and safe. Set for these tests only, so that no
    other test (nor a subprocess of one) inherits it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser(allow_orm_beside_playwright):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


class Tab:
    """One browser context and page, with the answers it posted and any script errors."""

    def __init__(self, browser, base_url, viewport=None):
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.posts: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _request(self, request):
        path = request.url.removeprefix(self.base_url)
        if request.method == "POST" and path.endswith("/answer"):
            self.posts.append(path)
        elif path.endswith("/image"):
            self.images.append(path)

    def log_in(self, username, password):
        self.page.goto(self.base_url + "/accounts/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.get_by_role("heading", name="My studies")).to_be_visible()

    def open_study(self, study):
        self.page.goto(f"{self.base_url}/study/{study.pk}/")
        self.wait_ready()

    def wait_ready(self):
        """Until the page takes an answer: image shown, nothing in flight."""
        expect(self.page.locator("#label-app")).to_have_attribute("data-state", "ready")

    def progress(self):
        return self.page.locator("#progress-text")

    def close(self):
        self.context.close()
        assert self.errors == []


@pytest.fixture
def tabs(browser, live_server):
    opened = []

    def open_tab(**kwargs):
        tab = Tab(browser, live_server.url, **kwargs)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.close()
