"""Reader accounts: created by a researcher, a one-time link to set a password, emailed where configured."""

import re

import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from studies.models import Study, StudyReader
from studies.readers import parse_new_readers, readers_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def study():
    return Study.objects.create(title="Realism")


def test_each_bad_line_is_named_and_nothing_is_created(reader):
    text = "dr_lee lee@example.org\nbad! x@example.org\ndr_khan not-an-email\n\nreader\ndr_lee\na b c"
    with pytest.raises(ValidationError) as caught:
        parse_new_readers(text)
    messages = caught.value.messages
    assert messages == [
        "line 2: 'bad!' is not a valid username (letters, digits, . @ + - _)",
        "line 3: 'not-an-email' is not an email address",
        "line 5: 'reader' already has an account; choose it from the list",
        "line 6: 'dr_lee' appears twice",
        "line 7: expected a username and at most one email address",
    ]


def test_a_new_reader_sets_a_password_once_with_their_link_and_then_logs_in(client, study):
    (made,) = readers_create(
        study=study, accounts=parse_new_readers("dr_lee, lee@example.org"), base_url="http://testserver/"
    )
    assert made.username == "dr_lee" and not made.emailed
    place = StudyReader.objects.get(study=study, reader__username="dr_lee")
    assert not place.reader.has_usable_password()

    page = client.get(made.link, follow=True)  # Django swaps the token for a session-held one
    assert page.status_code == 200 and b"Set your password" in page.content
    done = client.post(
        page.redirect_chain[-1][0],
        {"new_password1": "a long passphrase 42", "new_password2": "a long passphrase 42"},
        follow=True,
    )
    assert b"Your password is set" in done.content
    # Through the login page, as the reader does (the lock-out needs the request to know the address).
    logged_in = client.post("/accounts/login/", {"username": "dr_lee", "password": "a long passphrase 42"})
    assert logged_in.status_code == 302
    client.logout()
    again = client.get(made.link, follow=True)
    assert b"This link no longer works" in again.content


def test_links_are_emailed_where_email_is_configured(settings, study, django_capture_on_commit_callbacks):
    settings.READER_LINKS_BY_EMAIL = True
    with django_capture_on_commit_callbacks(execute=True):
        made = readers_create(
            study=study,
            accounts=parse_new_readers("dr_lee lee@example.org\ndr_khan"),
            base_url="https://rs.org",
        )
    assert [m.emailed for m in made] == [True, False]
    (message,) = mail.outbox
    assert message.to == ["lee@example.org"]
    link = re.search(r"https://rs\.org/accounts/reset/\S+", message.body).group(0)
    assert link == made[0].link
