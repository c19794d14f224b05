"""The labelling page in a real browser: Debian's Chromium driven by Playwright."""

import re

import pytest
from playwright.sync_api import expect

from studies.models import Answer, Presentation
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


LABELS = {"r": "real", "f": "fake", "u": "unsure"}


def answers_of(study, reader):
    return list(
        Answer.objects.filter(presentation__study=study, presentation__reader=reader).order_by(
            "presentation__position"
        )
    )


def first_unanswered(study, reader):
    pending = Presentation.objects.filter(study=study, reader=reader, answer__isnull=True)
    return pending.order_by("position").first()


def test_a_reader_labels_a_whole_study_with_the_keyboard_resuming_after_a_reload(tabs, reader):
    study = make_open_study(reader, images=6)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    page.get_by_role("row", name=re.compile(study.title)).get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/$"))
    expect(page.locator("#instructions")).to_be_visible()  # nothing answered yet
    expect(page.get_by_role("img", name="Radiograph to label")).to_be_visible()
    html = page.content()  # the page names no presentation: the image is a blob: URL
    assert not any(str(p.pk) in html for p in Presentation.objects.filter(study=study))
    assert page.get_by_role("img").get_attribute("src").startswith("blob:")

    keys = ["r", "f", "u", "f", "r", "r"]
    for index, key in enumerate(keys):
        if index == 3:
            # Half way: a reload comes back to the same next unanswered image.
            tab.wait_ready()
            expect(tab.progress()).to_have_text("4 of 6")
            upcoming = first_unanswered(study, reader)
            # On screen: the image fetched before the last one (which is the prefetch of the next).
            assert tab.images[-2] == f"/p/{upcoming.pk}/image"
            tab.images.clear()
            page.reload()
            tab.wait_ready()
            assert tab.images[0] == f"/p/{upcoming.pk}/image"
            expect(page.locator("#instructions")).to_be_hidden()
        tab.wait_ready()
        expect(tab.progress()).to_have_text(f"{index + 1} of 6")
        page.keyboard.press(key)

    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
    expect(page.get_by_role("heading")).to_have_text("Thank you — all 6 images are labelled")
    expect(page.get_by_role("main").get_by_role("link", name="My studies")).to_be_visible()

    answers = answers_of(study, reader)
    assert [a.label for a in answers] == [LABELS[k] for k in keys]
    assert all(a.viewing_ms > 0 for a in answers)
    assert all(a.confidence is None for a in answers)
    assert len(tab.posts) == 6


def test_a_double_press_records_one_answer_and_advances_once(tabs, reader):
    study = make_open_study(reader, images=6)
    tab = tabs()
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)

    tab.page.keyboard.press("r")
    tab.page.keyboard.press("r")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 6")

    tab.page.get_by_role("button", name="Real", exact=True).dblclick()
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 6")
    tab.page.wait_for_timeout(600)  # room for a stray second answer to arrive

    expect(tab.progress()).to_have_text("3 of 6")
    assert len(tab.posts) == 2
    assert [a.label for a in answers_of(study, reader)] == ["real", "real"]


def test_with_confidence_asked_a_label_alone_sends_nothing_until_a_confidence(tabs, reader):
    study = make_open_study(reader, images=4, ask_confidence=True)
    tab = tabs()
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)

    tab.page.keyboard.press("f")
    expect(tab.page.get_by_role("button", name="Fake", exact=True)).to_have_attribute("aria-pressed", "true")
    tab.page.wait_for_timeout(500)
    assert tab.posts == []
    assert answers_of(study, reader) == []

    tab.page.keyboard.press("4")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 4")
    [answer] = answers_of(study, reader)
    assert (answer.label, answer.confidence) == ("fake", 4)
    assert answer.viewing_ms > 0
    # The next image starts with nothing chosen.
    expect(tab.page.locator("[aria-pressed=true]")).to_have_count(0)


def test_an_outsider_can_open_neither_the_study_nor_its_images(tabs, reader, outsider):
    study = make_open_study(reader, images=2)
    tab = tabs()
    tab.log_in("outsider", "outsider-pass")
    assert tab.page.goto(f"{tab.base_url}/study/{study.pk}/").status == 404
    presentation = Presentation.objects.filter(study=study).first()
    assert tab.page.goto(f"{tab.base_url}/p/{presentation.pk}/image").status == 404


@pytest.mark.parametrize("width,height", [(1280, 800), (1920, 1080)])
def test_the_page_fits_the_screen_and_shows_where_the_focus_is(tabs, reader, width, height):
    study = make_open_study(reader, images=2)
    tab = tabs(viewport={"width": width, "height": height})
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page = tab.page
    if width == 1280:
        page.screenshot(path="/tmp/label_page.png")

    fits = page.evaluate(
        """() => {
            const d = document.documentElement;
            return d.scrollWidth <= innerWidth && d.scrollHeight <= innerHeight
                && document.body.scrollHeight <= innerHeight;
        }"""
    )
    assert fits
    box = page.locator("#stage").bounding_box()
    assert box["height"] > height * 0.75

    buttons = page.evaluate(
        "() => [...document.querySelectorAll('button')].filter(b => b.offsetParent && !b.disabled).length"
    )
    seen = {}
    for _ in range(buttons + 10):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => {
                const el = document.activeElement;
                if (!el || el.tagName !== 'BUTTON') return null;
                const s = getComputedStyle(el);
                return [el.textContent.trim(), s.outlineStyle, parseFloat(s.outlineWidth)];
            }"""
        )
        if focused:
            name, style, outline_width = focused
            seen[name] = (style, outline_width)
    assert len(seen) == buttons
    assert all(style != "none" and outline_width >= 2 for style, outline_width in seen.values()), seen


def test_practice_shows_the_truth_and_going_back_changes_an_answer(tabs, reader):
    study = make_open_study(reader, images=3, practice=1, allow_back=True)
    practice = Presentation.objects.get(study=study, reader=reader, is_practice=True)
    truth = "A real radiograph" if practice.image.origin == "real" else "A synthetic image"
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    expect(tab.progress()).to_have_text("Practice 1 of 1")
    page.keyboard.press("u")
    expect(page.get_by_role("alert")).to_contain_text(truth)
    expect(page.get_by_role("button", name="Continue")).to_be_focused()
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("1 of 3")
    expect(page.get_by_role("button", name="Back")).to_be_disabled()  # nothing to go back to but practice

    page.keyboard.press("r")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 3")
    page.keyboard.press("b")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("1 of 3")
    real = page.get_by_role("button", name="Real", exact=True)
    expect(real).to_have_class(re.compile(r"\bis-earlier\b"))  # marked as the earlier answer, not chosen
    expect(real).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("f")  # changed mind
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 3")
    page.keyboard.press("r")
    tab.wait_ready()
    page.keyboard.press("r")
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
    labels = [a.label for a in answers_of(study, reader)]
    assert labels == ["unsure", "fake", "real", "real"]
    assert "truth" not in page.content()


def test_the_time_limit_hides_the_image_and_the_answer_still_counts(tabs, reader):
    study = make_open_study(reader, images=2, time_limit_seconds=1)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    expect(page.get_by_text("Time is up")).to_be_visible(timeout=5000)
    expect(page.get_by_role("img", name="Radiograph to label")).to_be_hidden()
    page.keyboard.press("f")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 2")
    expect(page.get_by_text("Time is up")).to_be_hidden()
    (answer,) = answers_of(study, reader)
    assert answer.label == "fake" and answer.viewing_ms >= 1000


# Window presets (static/js/label/viewer.js): the range of grey levels [low, high] of the
# normalised image stretched over the screen, as a filter brightness(b) contrast(c) with
# (v b - 1/2) c + 1/2 = 0 at low and 1 at high: b = 1 / (high + low), c = 1 + 2 low / (high - low).
PRESETS = [("Lung", 0.0, 0.55), ("Mediastinum", 0.35, 0.9), ("Bone", 0.55, 1.0)]


def test_window_presets_by_key_map_their_range_to_black_and_white_and_reset(tabs, reader):
    study = make_open_study(reader, images=2)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    tab.wait_ready()
    image = page.get_by_role("img", name="Radiograph to label")
    preset = page.locator("#window-preset")
    for name, low, high in PRESETS:
        page.keyboard.press("w")
        expect(preset).to_contain_text(name)
        brightness, contrast = 1 / (high + low), 1 + 2 * low / (high - low)
        found = re.search(r"brightness\(([\d.]+)\) contrast\(([\d.]+)\)", image.get_attribute("style"))
        assert (float(found[1]), float(found[2])) == (
            pytest.approx(brightness, abs=1e-4),
            pytest.approx(contrast, abs=1e-4),
        )
    page.keyboard.press("w")  # round again to the image as stored
    expect(preset).to_contain_text("Default")
    assert "filter" not in (image.get_attribute("style") or "")
    page.keyboard.press("w")
    page.keyboard.press("0")
    expect(preset).to_contain_text("Default")
    assert "filter" not in (image.get_attribute("style") or "")
    page.keyboard.press("r")  # presets leave answering alone
    tab.wait_ready()
    assert [a.label for a in answers_of(study, reader)] == ["real"]
