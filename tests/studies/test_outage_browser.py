"""The labelling page through a real database outage: the answer is kept, and lands once when it ends."""

import pytest
from playwright.sync_api import expect

from studies.models import Answer, Presentation
from tests.studies.outage import database_outage
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.services]

# The page's longest wait between two tries (label/server.js: RETRY_DELAYS_S), and a margin.
RETRY_CAP_MS = 5_000
MARGIN_MS = 2_500


def test_an_answer_made_during_an_outage_waits_on_the_page_and_lands_once_when_it_ends(tabs, reader):
    study = make_open_study(reader, images=4)
    tab = tabs()
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    tab.page.keyboard.press("r")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 4")
    second = Presentation.objects.filter(study=study, reader=reader, answer__isnull=True).order_by(
        "position"
    )[0]
    status = tab.page.locator("#status")

    with database_outage():
        tab.page.keyboard.press("f")
        expect(status).to_contain_text("Your answer has not reached the server yet; it is kept here.")
        expect(tab.page.locator("#label-app")).to_have_attribute("data-state", "sending")
        # Long enough for a back-off growing to 30 s (1, 2, 4, 8, 15, 30) to wait 14 s more when it ends.
        tab.page.wait_for_timeout(16_000)
        tried_during_outage = len(tab.posts)

    assert tried_during_outage >= 5  # tried again every few seconds
    expect(tab.progress()).to_have_text("3 of 4", timeout=RETRY_CAP_MS + MARGIN_MS)
    tab.wait_ready()
    expect(status).to_be_hidden()
    answers = Answer.objects.filter(presentation__study=study, presentation__reader=reader)
    assert sorted((a.presentation_id, a.label) for a in answers) == sorted(
        [(answers.get(label="real").presentation_id, "real"), (second.pk, "fake")]
    )
