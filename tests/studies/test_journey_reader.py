"""A reader's whole journey in Chromium, by keys and links only: My studies, practice, the study, the end.

After each step the database says what was stored, not only the page.
"""

import re

import pytest
from playwright.sync_api import expect

from studies.models import Answer, Presentation
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def stored(study, reader):
    """(label, confidence) of each answered presentation, in sequence order."""
    answers = Answer.objects.filter(presentation__study=study, presentation__reader=reader)
    return [(a.label, a.confidence) for a in answers.order_by("presentation__position")]


def answer(tab, *keys):
    tab.wait_ready()
    for key in keys:
        tab.page.keyboard.press(key)


def test_a_reader_practises_labels_a_whole_study_goes_back_and_resumes(tabs, reader):
    study = make_open_study(reader, images=6, practice=2, ask_confidence=True, allow_back=True)
    practice = list(
        Presentation.objects.filter(study=study, reader=reader, is_practice=True).order_by("position")
    )
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")

    # My studies counts the study's own images, practice apart, as every page does.
    row = page.get_by_role("row", name=re.compile(study.title))
    expect(row).to_contain_text("0 of 6")
    expect(row).to_contain_text("practice 0 of 2")
    row.get_by_role("link", name="Start").click()
    expect(page.locator("#instructions")).to_be_visible()

    # Practice, each with the truth after the answer.
    for index, (label, confidence) in enumerate([("r", "3"), ("f", "4")]):
        tab.wait_ready()
        expect(tab.progress()).to_have_text(f"Practice {index + 1} of 2")
        answer(tab, label, confidence)
        truth = "A real radiograph" if practice[index].image.origin == "real" else "A synthetic image"
        expect(page.get_by_role("alert")).to_contain_text(truth)
        expect(page.get_by_role("button", name="Continue")).to_be_focused()
        page.keyboard.press("Enter")
    assert stored(study, reader) == [("real", 3), ("fake", 4)]

    # The study: a label and a confidence each.
    tab.wait_ready()
    expect(tab.progress()).to_have_text("1 of 6")
    answer(tab, "r", "4")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 6")
    answer(tab, "f", "5")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 6")

    # Back: the earlier answer is marked, nothing is chosen, and a new label alone sends nothing.
    posts = len(tab.posts)
    page.keyboard.press("b")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 6")
    expect(page.locator("#status")).to_contain_text("Your earlier answer (marked): fake, confidence 5")
    expect(page.locator("[aria-pressed=true]")).to_have_count(0)
    page.keyboard.press("u")
    page.wait_for_timeout(400)
    assert len(tab.posts) == posts
    assert stored(study, reader)[3] == ("fake", 5)
    page.keyboard.press("2")  # now both are chosen anew: the change is sent
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 6")
    assert stored(study, reader) == [("real", 3), ("fake", 4), ("real", 4), ("unsure", 2)]
    # Nothing pressed for the earlier image lands on this one.
    expect(page.locator("[aria-pressed=true]")).to_have_count(0)
    answer(tab, "r", "1")

    # A reload in the middle shows the same next image.
    tab.wait_ready()
    expect(tab.progress()).to_have_text("4 of 6")
    upcoming = Presentation.objects.filter(study=study, reader=reader, answer__isnull=True).order_by(
        "position"
    )[0]
    tab.images.clear()
    page.reload()
    tab.wait_ready()
    assert tab.images[0] == f"/p/{upcoming.pk}/image"
    expect(tab.progress()).to_have_text("4 of 6")

    # A double key press records one answer and moves on once.
    posts = len(tab.posts)
    page.keyboard.press("f")
    page.keyboard.press("3")
    page.keyboard.press("3")
    page.keyboard.press("f")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("5 of 6")
    page.wait_for_timeout(500)
    expect(tab.progress()).to_have_text("5 of 6")
    assert len(tab.posts) == posts + 1
    answer(tab, "u", "3")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("6 of 6")

    # Log out, log in again, Resume: back at the same place.
    page.get_by_role("link", name="My studies").click()
    row = page.get_by_role("row", name=re.compile(study.title))
    expect(row).to_contain_text("5 of 6")
    expect(row).to_contain_text("practice 2 of 2")
    page.get_by_role("button", name="Log out").click()
    tab.log_in("reader", "reader-pass")
    page.get_by_role("row", name=re.compile(study.title)).get_by_role("link", name="Resume").click()
    tab.wait_ready()
    expect(tab.progress()).to_have_text("6 of 6")
    answer(tab, "r", "5")

    # The end page counts like the others, practice apart.
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
    expect(page.get_by_role("heading")).to_have_text("Thank you — all 6 images are labelled")
    expect(page.get_by_role("main")).to_contain_text("and the 2 practice images before them")
    page.get_by_role("main").get_by_role("link", name="My studies").click()
    row = page.get_by_role("row", name=re.compile(study.title))
    expect(row).to_contain_text("6 of 6")
    expect(row).to_contain_text("Finished")

    assert stored(study, reader) == [
        ("real", 3),
        ("fake", 4),
        ("real", 4),
        ("unsure", 2),
        ("real", 1),
        ("fake", 3),
        ("unsure", 3),
        ("real", 5),
    ]
    assert all(a.viewing_ms > 0 for a in Answer.objects.filter(presentation__study=study))


def test_every_button_of_the_labelling_page_works_with_the_mouse(tabs, reader):
    study = make_open_study(reader, images=3, practice=1, ask_confidence=True, allow_back=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    page.get_by_role("row", name=re.compile(study.title)).get_by_role("link", name="Start").click()
    tab.wait_ready()

    instructions = page.locator("#instructions")
    expect(instructions).to_be_visible()
    page.get_by_role("button", name="Close instructions").click()
    expect(instructions).to_be_hidden()
    page.get_by_role("button", name="Instructions").click()
    expect(instructions).to_be_visible()
    page.get_by_role("button", name="Close instructions").click()

    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_text("The image is hidden and the viewing clock is stopped.")).to_be_visible()
    page.get_by_role("button", name="Resume", exact=False).last.click()
    tab.wait_ready()

    page.get_by_label("Contrast").fill("1")
    page.mouse.move(640, 300)
    page.mouse.wheel(0, -400)
    expect(page.locator("#zoom-readout")).not_to_have_text("100%")
    page.get_by_role("button", name="Window: Custom. Next preset").click()
    expect(page.locator("#window-preset")).to_contain_text("Default")
    page.get_by_role("button", name="Window: Default. Next preset").click()
    expect(page.locator("#window-preset")).to_contain_text("Lung")
    page.get_by_role("button", name="Reset view").click()
    expect(page.locator("#zoom-readout")).to_have_text("100%")
    expect(page.get_by_label("Contrast")).to_have_value("0")
    expect(page.locator("#window-preset")).to_contain_text("Default")

    # Practice, by the buttons, and Continue.
    page.get_by_role("button", name="Fake", exact=True).click()
    page.get_by_role("button", name="Confidence 2 of 5").click()
    page.get_by_role("button", name="Continue").click()
    tab.wait_ready()
    for label, confidence in (
        ("Real", "Confidence 5 of 5, certain"),
        ("Unsure", "Confidence 1 of 5, a guess"),
    ):
        page.get_by_role("button", name=label, exact=True).click()
        page.get_by_role("button", name=confidence).click()
        tab.wait_ready()
    page.get_by_role("button", name="Back").click()
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 3")
    page.get_by_role("button", name="Fake", exact=True).click()
    page.get_by_role("button", name="Confidence 3 of 5").click()
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 3")
    assert stored(study, reader) == [("fake", 2), ("real", 5), ("fake", 3)]

    page.get_by_role("link", name="My studies").click()
    expect(page.get_by_role("heading", name="My studies")).to_be_visible()
