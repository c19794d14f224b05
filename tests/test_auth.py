"""Login guards every page but the login page and /healthz; staff use the admin."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/", "/admin/generation/workerreport/"])
def test_it_sends_anonymous_users_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].split("?")[0] in ("/accounts/login/", "/admin/login/")
    assert "next=" in response["Location"]


def test_the_login_page_uses_the_apps_look(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "css/app.css" in html
    assert 'name="username"' in html and 'name="password"' in html


def test_a_reader_logs_in_lands_on_my_studies_and_logs_out(client, reader):
    response = client.post("/accounts/login/", {"username": "reader", "password": "reader-pass"})
    assert response.status_code == 302 and response["Location"] == "/"
    home = client.get("/")
    assert home.status_code == 200
    assert "My studies" in home.content.decode()
    assert "/admin/" not in home.content.decode()
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_a_wrong_password_is_refused_with_a_message(client, reader):
    response = client.post("/accounts/login/", {"username": "reader", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_a_login_returns_to_the_page_first_asked_for(client, reader):
    response = client.post(
        "/accounts/login/?next=/", {"username": "reader", "password": "reader-pass", "next": "/"}
    )
    assert response["Location"] == "/"


def test_staff_reach_the_admin_and_readers_do_not(client, researcher, reader):
    client.force_login(researcher)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/generation/workerreport/").status_code == 200
    client.force_login(reader)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "login" in response["Location"]
