"""Repeated wrong passwords lock a username out from that address; a researcher can unlock it."""

import pytest
from axes.models import AccessAttempt
from playwright.sync_api import expect

pytestmark = pytest.mark.django_db
LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT


def admin_login(client, username, password, address="10.0.0.1"):
    return client.post("/admin/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_after_the_limit_the_right_password_is_refused_with_a_clear_message(client, researcher):
    for _ in range(LIMIT - 1):
        assert admin_login(client, "researcher", "wrong").status_code == 200  # the form again, with its error
    assert admin_login(client, "researcher", "wrong").status_code == 429  # the last one allowed locks
    locked = admin_login(client, "researcher", "researcher-pass")
    assert locked.status_code == 429
    text = locked.content.decode()
    assert "Login locked" in text and "Too many wrong passwords for researcher" in text
    assert "60 minutes" in text and "css/app.css" in text  # our page, not a bare 403
    assert "_auth_user_id" not in client.session


def test_the_lock_holds_one_username_at_one_address(client, researcher, reader):
    for _ in range(LIMIT):
        admin_login(client, "researcher", "wrong")
    assert admin_login(client, "researcher", "researcher-pass", address="10.0.0.2").status_code == 302
    client.logout()
    response = client.post(
        "/accounts/login/", {"username": "reader", "password": "reader-pass"}, REMOTE_ADDR="10.0.0.1"
    )
    assert response.status_code == 302


def test_a_researcher_unlocks_an_account_in_the_admin(client, researcher, reader):
    for _ in range(LIMIT):
        client.post("/accounts/login/", {"username": "reader", "password": "wrong"})
    assert (
        client.post("/accounts/login/", {"username": "reader", "password": "reader-pass"}).status_code == 429
    )
    attempt = AccessAttempt.objects.get(username="reader")

    client.force_login(researcher)
    listing = client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "reader" in listing.content.decode()
    client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert not AccessAttempt.objects.filter(username="reader").exists()
    client.logout()
    assert (
        client.post("/accounts/login/", {"username": "reader", "password": "reader-pass"}).status_code == 302
    )


def test_a_few_mistakes_between_good_logins_never_lock_anyone_out(client, reader):
    for _ in range(3):
        for _ in range(LIMIT - 1):
            client.post("/accounts/login/", {"username": "reader", "password": "wrong"})
        assert (
            client.post("/accounts/login/", {"username": "reader", "password": "reader-pass"}).status_code
            == 302
        )
        client.logout()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_reader_locked_out_in_the_browser_sees_why(tabs, reader):
    tab = tabs()
    page = tab.page
    page.goto(tab.base_url + "/accounts/login/")
    for attempt in range(LIMIT):
        page.get_by_label("Username").fill("reader")
        page.get_by_label("Password").fill("not my password")
        page.get_by_role("button", name="Log in").click()
        if attempt < LIMIT - 1:
            expect(page.get_by_role("alert")).to_contain_text("enter a correct username and password")
    expect(page.get_by_role("heading", name="Login locked")).to_be_visible()
    page.goto(tab.base_url + "/accounts/login/")
    page.get_by_label("Username").fill("reader")
    page.get_by_label("Password").fill("reader-pass")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Login locked")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Too many wrong passwords for reader")
    page.goto(tab.base_url + "/")
    expect(page).to_have_url(tab.base_url + "/accounts/login/?next=/")  # not logged in
