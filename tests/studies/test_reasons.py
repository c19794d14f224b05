"""Why an image looks fake (issue 15): the reasons a study asks, stored with the answer, exported,
and given by keys in Chromium."""

import csv
import io
import re

import pytest
from playwright.sync_api import expect

from analysis.reads import answers_csv_chunks
from studies.exports import answer_rows
from studies.models import Answer, Presentation, Study
from studies.models.studies import DEFAULT_REASONS
from studies.services import AnswerRefused, answer_submit
from tests.generation.test_training_admin import admin_log_in
from tests.studies.study_fixtures import make_open_study


def sequence(study, reader):
    return list(
        Presentation.objects.filter(study=study, reader=reader, is_practice=False).order_by("position")
    )


@pytest.mark.django_db
def test_reasons_are_stored_in_the_studys_order_and_refused_where_not_asked_or_unknown(reader):
    study = make_open_study(reader, images=4, ask_reasons="fake", ask_reason_text=True, allow_back=True)
    first, second, third, _ = sequence(study, reader)
    answer = answer_submit(
        presentation=first, label="fake", viewing_ms=900, reasons=["Bones", "Anatomy", "Bones"]
    )
    assert (answer.reasons, answer.reason_text) == (["Anatomy", "Bones"], "")
    with pytest.raises(AnswerRefused, match="does not ask reasons for this answer"):
        answer_submit(presentation=second, label="real", viewing_ms=900, reasons=["Bones"])
    with pytest.raises(AnswerRefused, match="Unknown reason 'Hands'"):
        answer_submit(presentation=second, label="fake", viewing_ms=900, reasons=["Hands"])
    with pytest.raises(AnswerRefused, match="under 500 characters"):
        answer_submit(presentation=second, label="fake", viewing_ms=900, reason_text="x" * 501)
    assert not Answer.objects.filter(presentation=second).exists()
    answer_submit(presentation=second, label="fake", viewing_ms=900, reason_text="  ribs too smooth ")
    answer_submit(presentation=third, label="real", viewing_ms=900)
    # Going back and changing the reasons changes the answer; the same again changes nothing.
    changed = answer_submit(presentation=first, label="fake", viewing_ms=100, reasons=["Texture or noise"])
    assert (changed.reasons, changed.viewing_ms) == (["Texture or noise"], 1000)
    again = answer_submit(presentation=first, label="fake", viewing_ms=100, reasons=["Texture or noise"])
    assert again.viewing_ms == 1000
    rows = {
        int(row["image"]): row
        for row in csv.DictReader(io.StringIO("".join(answers_csv_chunks(answer_rows(study)))))
    }
    assert rows[first.image_id]["reasons"] == "Texture or noise"
    assert (rows[second.image_id]["reasons"], rows[second.image_id]["reason_text"]) == ("", "ribs too smooth")
    assert rows[third.image_id]["reasons"] == ""


@pytest.mark.django_db
def test_a_study_that_requires_reasons_refuses_an_answer_without_one(reader):
    study = make_open_study(reader, images=2, ask_reasons="always", reasons_required=True)
    first, _ = sequence(study, reader)
    with pytest.raises(AnswerRefused, match=r"Give at least one reason\.$"):
        answer_submit(presentation=first, label="real", viewing_ms=900)
    with pytest.raises(AnswerRefused, match="asks no note"):
        answer_submit(presentation=first, label="real", viewing_ms=900, reason_text="looks fine")
    assert answer_submit(presentation=first, label="real", viewing_ms=900, reasons=["Other"]).reasons == [
        "Other"
    ]
    assert Study.objects.get(pk=study.pk).reason_choices == list(DEFAULT_REASONS)


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_reader_gives_reasons_by_keys_only_after_fake_and_can_skip_or_change_the_label(tabs, reader):
    study = make_open_study(reader, images=4, ask_reasons="fake", ask_reason_text=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    app = page.locator("#label-app")
    panel = page.get_by_role("group", name=re.compile("What gave it away?"))
    tab.wait_ready()
    expect(panel).to_be_hidden()
    page.keyboard.press("f")
    expect(app).to_have_attribute("data-machine", "explaining")
    expect(panel).to_be_visible()
    page.keyboard.press("2")
    page.keyboard.press("5")
    page.keyboard.press("2")  # off again
    page.keyboard.press("3")
    expect(page.get_by_role("button", name="Text or markers")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 4")
    page.keyboard.press("r")  # real: no reasons asked, sent at once
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 4")
    page.keyboard.press("f")
    expect(panel).to_be_visible()
    page.keyboard.press("Escape")  # changed my mind: back to the image, nothing sent
    expect(app).to_have_attribute("data-machine", "viewing")
    tab.wait_ready()
    page.keyboard.press("f")
    page.get_by_label("Note").fill("the clavicle ends in mid-air")
    page.get_by_label("Note").press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("4 of 4")
    page.keyboard.press("f")
    page.get_by_role("button", name=re.compile("^Send")).click()  # none given: optional here
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
    given = [
        (a.label, a.reasons, a.reason_text)
        for a in Answer.objects.filter(presentation__study=study).order_by("presentation__position")
    ]
    assert given == [
        ("fake", ["Bones", "Text or markers"], ""),
        ("real", [], ""),
        ("fake", [], "the clavicle ends in mid-air"),
        ("fake", [], ""),
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_where_reasons_are_required_the_page_asks_for_one_before_sending(tabs, reader):
    study = make_open_study(reader, images=2, ask_reasons="always", reasons_required=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    tab.wait_ready()
    page.keyboard.press("r")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Give at least one reason, then send.")
    expect(page.locator("#label-app")).to_have_attribute("data-machine", "explaining")
    page.get_by_role("button", name="Anatomy").click()
    page.keyboard.press("Enter")
    tab.wait_ready()
    assert Answer.objects.get(presentation__study=study, presentation__position=0).reasons == ["Anatomy"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_researcher_sets_up_reasons_on_the_study_form_and_bad_lists_are_refused(tabs, researcher):
    tab = tabs()
    page = tab.page
    admin_log_in(tab)
    page.goto(f"{tab.base_url}/admin/studies/study/add/")
    page.locator("#id_title").fill("Reasons study")
    page.get_by_label("Ask reasons").select_option(label="On images called fake")
    reasons = page.get_by_label("Reasons:", exact=True)
    expect(reasons).to_have_value("\n".join(DEFAULT_REASONS))
    reasons.fill("\n".join(f"Reason {n}" for n in range(10)))
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.get_by_text("At most 9 reasons: one key (1 to 9) each.")).to_be_visible()
    reasons.fill("Anatomy\nRibs; spine\n")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.get_by_text("A reason cannot hold ';'")).to_be_visible()
    reasons.fill("Anatomy\n\n  Bones  \nLines and tubes\n")
    page.get_by_label("Reasons required").check()
    page.get_by_label("Ask reason text").check()
    page.get_by_label("Ask region").select_option(label="On every image")
    page.get_by_label("Region required").check()
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.get_by_text("was added successfully")).to_be_visible()
    study = Study.objects.get(title="Reasons study")
    assert (study.ask_reasons, study.reason_choices) == ("fake", ["Anatomy", "Bones", "Lines and tubes"])
    assert study.reasons_required and study.ask_reason_text
    assert (study.ask_region, study.region_required) == ("always", True)
