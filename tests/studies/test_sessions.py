"""Reading sessions over days (issue 15): sessions begun and counted, the display check, break
reminders and a maximum per session, as the service records them and as a reader meets them."""

import csv
import io
import re
from datetime import timedelta

import pytest
from django.db.models import F
from django.test import override_settings
from playwright.sync_api import expect

from studies.models import Answer, Presentation, ReadingSession
from studies.services import AnswerRefused, answer_submit
from studies.sessions import SessionFull, display_check_record, session_begin
from tests.generation.test_training_admin import admin_log_in
from tests.studies.study_fixtures import make_open_study


def sequence(study, reader):
    return list(
        Presentation.objects.filter(study=study, reader=reader, is_practice=False).order_by("position")
    )


def later(session, minutes):
    """As if the session's last answer came `minutes` earlier."""
    ReadingSession.objects.filter(pk=session.pk).update(
        last_seen=session.last_seen - timedelta(minutes=minutes),
        started=session.started - timedelta(minutes=minutes),
    )


@pytest.mark.django_db
def test_a_session_goes_on_while_answers_come_and_a_new_one_begins_after_the_gap(reader):
    study = make_open_study(reader, images=6, allow_back=True)
    first, second, third, *_ = sequence(study, reader)
    session = session_begin(
        study=study, reader=reader, screen_width="1920", screen_height="1080", pixel_ratio="2"
    )
    assert (session.number, session.screen_width, session.screen_height, session.pixel_ratio) == (
        1,
        1920,
        1080,
        2.0,
    )
    answer_submit(presentation=first, label="real", viewing_ms=1200)
    answer_submit(presentation=second, label="fake", viewing_ms=800)
    answer_submit(presentation=first, label="real", viewing_ms=1200)  # a retry: nothing more
    answer_submit(presentation=first, label="fake", viewing_ms=300)  # a change: time, not an image
    session.refresh_from_db()
    assert (session.answers, session.viewing_ms) == (2, 2300)
    # Twenty minutes later (within the 30-minute gap): the same session, whatever the page says.
    later(session, 20)
    again = session_begin(study=study, reader=reader, screen_width="huge", pixel_ratio="-1")
    assert again.pk == session.pk and again.screen_width == 1920 and again.pixel_ratio == 2.0
    # A day later: a new one, numbered on; an answer without a page begins one too.
    later(session, 24 * 60)
    answer_submit(presentation=third, label="real", viewing_ms=500)
    sessions = list(ReadingSession.objects.filter(study=study, reader=reader).order_by("number"))
    assert [(s.number, s.answers, s.viewing_ms) for s in sessions] == [(1, 2, 2300), (2, 1, 500)]


@pytest.mark.django_db
@override_settings(READING_SESSION_GAP_MINUTES=30)
def test_a_session_takes_at_most_the_studys_maximum_then_the_reader_breaks(reader):
    study = make_open_study(reader, images=6, session_max_images=2)
    first, second, third, *_ = sequence(study, reader)
    answer_submit(presentation=first, label="real", viewing_ms=900)
    answer_submit(presentation=second, label="real", viewing_ms=900)
    with pytest.raises(
        SessionFull, match="at most 2 images in one session. Take a break of at least 30 minutes"
    ):
        answer_submit(presentation=third, label="real", viewing_ms=900)
    assert not Answer.objects.filter(presentation=third).exists()
    later(ReadingSession.objects.get(study=study, number=1), 31)
    answer_submit(presentation=third, label="real", viewing_ms=900)
    assert ReadingSession.objects.get(study=study, number=2).answers == 1


@pytest.mark.django_db
def test_the_display_check_is_recorded_with_its_session(reader):
    study = make_open_study(reader, images=2, display_check="required")
    session = session_begin(study=study, reader=reader)
    with pytest.raises(ValueError, match="requires the display check"):
        display_check_record(session=session, study=study, shown={}, seen={})
    with pytest.raises(ValueError, match="Say where the dark patch was seen"):
        display_check_record(session=session, study=study, shown={"dark": "middle"}, seen={"dark": "none"})
    shown = {"dark": "top left", "bright": "bottom right"}
    display_check_record(
        session=session, study=study, shown=shown, seen={"dark": "none", "bright": "bottom right"}
    )
    assert session.display_check == "failed"
    assert session.display_detail["dark"] == {"shown": "top left", "seen": "none"}
    display_check_record(session=session, study=study, shown=shown, seen=dict(shown))
    session.refresh_from_db()
    assert session.display_check == "passed"
    study.display_check = "offered"
    display_check_record(session=session, study=study, shown={}, seen={})
    assert session.display_check == "skipped"


# Where each faint patch is on the pattern, by check.js's layout (16 px margins, a 40 px ramp
# with 14 px of labels, two squares side by side, patches a quarter of a side, an eighth in from
# the corner): the centre of each patch, from the square's top left.
WIDTH, HEIGHT, TOP = 520, 254, 16 + 40 + 14 + 16
SIDE = min((WIDTH - 48) / 2, HEIGHT - TOP - 16)
NEAR, FAR = SIDE / 4, SIDE - SIDE / 4
PLACES = {
    "top left": (NEAR, NEAR),
    "top right": (FAR, NEAR),
    "bottom left": (NEAR, FAR),
    "bottom right": (FAR, FAR),
}
SQUARES = {"dark": (16, 0), "bright": (WIDTH - 16 - SIDE, 255)}  # left edge, background
SEE = """([x, y]) => {
  const canvas = document.getElementById("check-pattern");
  const ratio = canvas.width / Number(canvas.getAttribute("width"));
  return canvas.getContext("2d").getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data[0];
}"""


def look(page, square):
    """Where the faint patch is in a square, read off the canvas as a reader's eye would."""
    left, background = SQUARES[square]
    found = [
        place for place, (dx, dy) in PLACES.items() if page.evaluate(SEE, [left + dx, TOP + dy]) != background
    ]
    assert len(found) == 1, found
    return found[0]


def pass_check(page, dialog) -> tuple[str, str]:
    """Answer the display check as a reader who sees both patches; where they were."""
    dark, bright = look(page, "dark"), look(page, "bright")
    dialog.get_by_role("group", name="In the black square").get_by_label(dark.capitalize()).check()
    dialog.get_by_role("group", name="In the white square").get_by_label(bright.capitalize()).check()
    dialog.get_by_role("button", name="Done").click()
    return dark, bright


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_required_display_check_comes_before_the_first_image_until_it_is_passed(tabs, reader):
    study = make_open_study(reader, images=3, display_check="required")
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    page.goto(f"{tab.base_url}/study/{study.pk}/")
    dialog = page.get_by_role("dialog", name="Display check")
    expect(dialog).to_be_visible()
    expect(page.locator("#label-app")).to_have_attribute("data-machine", "checking")
    expect(dialog.get_by_role("button", name="Skip the check")).to_have_count(0)  # required
    dark, bright = look(page, "dark"), look(page, "bright")
    assert (
        page.evaluate(SEE, [SQUARES["dark"][0] + PLACES[dark][0], TOP + PLACES[dark][1]]) == 13
    )  # 5% of 255
    assert (
        page.evaluate(SEE, [SQUARES["bright"][0] + PLACES[bright][0], TOP + PLACES[bright][1]]) == 242
    )  # 95%
    # Not seen in the black square: not passed, and a new pattern to try again.
    dialog.get_by_role("group", name="In the black square").get_by_label("I can't see it").check()
    dialog.get_by_role("group", name="In the white square").get_by_label(bright.capitalize()).check()
    dialog.get_by_role("button", name="Done").click()
    expect(page.locator("#check-result")).to_contain_text(f"Not quite: in the black square it was {dark}")
    session = ReadingSession.objects.get(study=study, reader=reader)
    assert session.display_check == "failed"
    dialog.get_by_role("button", name="Try again").click()
    dark, bright = pass_check(page, dialog)
    expect(dialog).to_be_hidden()
    page.keyboard.press("Escape")  # the instructions of a first visit
    tab.wait_ready()
    session.refresh_from_db()
    assert session.display_check == "passed"
    assert session.display_detail == {
        "dark": {"shown": dark, "seen": dark},
        "bright": {"shown": bright, "seen": bright},
    }
    assert session.screen_width > 0 and session.screen_height > 0 and session.pixel_ratio == 1.0
    # Passed in this session: a reload goes straight to the image.
    page.reload()
    tab.wait_ready()
    expect(dialog).to_be_hidden()


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_an_offered_display_check_can_be_skipped(tabs, reader):
    study = make_open_study(reader, images=2, display_check="offered")
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    page.goto(f"{tab.base_url}/study/{study.pk}/")
    page.get_by_role("button", name="Skip the check").click()
    page.keyboard.press("Escape")
    tab.wait_ready()
    page.keyboard.press("r")
    tab.wait_ready()
    session = ReadingSession.objects.get(study=study, reader=reader)
    assert (session.display_check, session.answers) == ("skipped", 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_break_reminder_every_few_images_and_a_stop_at_the_sessions_maximum(tabs, reader):
    study = make_open_study(reader, images=6, break_every_images=2, session_max_images=5)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    reminder = page.get_by_role("alert").filter(has_text="Time for a break?")
    for key in "rf":
        tab.wait_ready()
        page.keyboard.press(key)
    expect(reminder).to_be_visible()
    expect(reminder).to_contain_text("You have read 2 images")
    expect(page.locator("#label-app")).to_have_attribute("data-machine", "resting")
    page.keyboard.press("Enter")
    expect(reminder).to_be_hidden()
    for key in "rf":
        tab.wait_ready()
        page.keyboard.press(key)
    expect(reminder).to_be_visible()
    page.get_by_role("button", name=re.compile("^Continue")).click()
    tab.wait_ready()
    page.keyboard.press("u")  # the fifth: the session's last
    stop = page.locator("#stop-overlay")
    expect(stop).to_be_visible()
    expect(stop).to_contain_text("Time for a break")
    expect(stop).to_contain_text("at most 5 images in one session")
    assert Answer.objects.filter(presentation__study=study).count() == 5
    page.reload()  # still the same session: still a break
    expect(stop).to_contain_text("Time for a break")
    expect(page.get_by_role("link", name="Back to my studies")).to_be_visible()


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_sessions_over_days_show_on_my_studies_and_to_researchers_with_sessions_csv(
    tabs, reader, researcher, tmp_path
):
    study = make_open_study(reader, images=4, display_check="offered")
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    page.goto(f"{tab.base_url}/study/{study.pk}/")
    page.get_by_role("button", name="Skip the check").click()
    page.keyboard.press("Escape")
    for key in "rf":
        tab.wait_ready()
        page.keyboard.press(key)
    tab.wait_ready()
    page.get_by_role("link", name="My studies").click()  # stops here, comes back the next day
    later(ReadingSession.objects.get(study=study, number=1), 24 * 60)
    row = page.get_by_role("row", name=re.compile("Chest X-ray realism"))
    expect(row).to_contain_text("2 of 4")
    expect(row).to_contain_text("1 session,")
    row.get_by_role("link", name="Resume").click()
    dialog = page.get_by_role("dialog", name="Display check")
    expect(dialog).to_be_visible()  # a new session: the check again
    pass_check(page, dialog)
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 4")  # the same place
    page.keyboard.press("u")
    tab.wait_ready()
    page.get_by_role("link", name="My studies").click()
    expect(page.get_by_role("row", name=re.compile("Chest X-ray realism"))).to_contain_text("2 sessions,")
    sessions = list(ReadingSession.objects.filter(study=study).order_by("number"))
    assert [(s.number, s.answers, s.display_check) for s in sessions] == [(1, 2, "skipped"), (2, 1, "passed")]

    staff = tabs(viewport={"width": 1400, "height": 900})
    admin_log_in(staff)
    staff.page.goto(f"{staff.base_url}/admin/studies/study/{study.pk}/readers/")
    reader_row = staff.page.get_by_role("row", name=re.compile("^reader"))
    expect(reader_row.locator(".reader-sessions")).to_have_text("2")
    expect(reader_row.locator(".reader-check")).to_contain_text("Passed")
    expect(reader_row.locator(".reader-check")).to_contain_text("session 2")
    staff.page.goto(f"{staff.base_url}/admin/studies/study/{study.pk}/results/")
    with staff.page.expect_download() as download:
        staff.page.get_by_role("link", name="sessions.csv", exact=True).click()
    path = tmp_path / "sessions.csv"
    download.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["reader"], r["session"], r["answers"], r["display_check"]) for r in rows] == [
        ("R001", "1", "2", "skipped"),
        ("R001", "2", "1", "passed"),
    ]
    assert float(rows[0]["viewing_seconds"]) > 0 and rows[0]["screen_width"]


def test_with_a_washout_every_repeat_comes_after_every_first_showing():
    from studies.sequences import sequence_order

    images = list(range(100, 120))
    for seed in range(20):
        slots = sequence_order(images=images, practice=[1, 2], repeat_percent=25, seed=seed, washout=True)
        assert slots == sequence_order(
            images=images, practice=[1, 2], repeat_percent=25, seed=seed, washout=True
        )
        kinds = ["practice" if s.is_practice else "repeat" if s.is_repeat else "first" for s in slots]
        assert kinds == ["practice"] * 2 + ["first"] * 20 + ["repeat"] * 5
        assert sorted(s.image_id for s in slots if not s.is_practice and not s.is_repeat) == images
        assert len({s.image_id for s in slots if s.is_repeat}) == 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_the_repeats_wait_for_the_washout_then_open(tabs, reader):
    study = make_open_study(reader, images=4, repeat_percent=50, washout_hours=48)
    presentations = sequence(study, reader)
    assert [p.is_repeat for p in presentations] == [False] * 4 + [True] * 2
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    for key in "rfrf":
        tab.wait_ready()
        page.keyboard.press(key)
    stop = page.locator("#stop-overlay")
    expect(stop).to_be_visible()
    expect(stop).to_contain_text("Come back later")
    expect(stop).to_contain_text("You have read every image once (4 of 6)")
    expect(stop).to_contain_text("after at least 48 hours")
    with pytest.raises(AnswerRefused, match="opens after the study's washout"):
        answer_submit(presentation=presentations[4], label="real", viewing_ms=900)
    # Two days on (as if the first reads were then): the repeats open where the reader left off.
    Answer.objects.filter(presentation__study=study).update(created=F("created") - timedelta(hours=49))
    page.reload()
    tab.wait_ready()
    expect(tab.progress()).to_have_text("5 of 6")
    page.keyboard.press("u")
    tab.wait_ready()
    page.keyboard.press("u")
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))
    assert Answer.objects.filter(presentation__study=study, presentation__is_repeat=True).count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_break_reminder_after_some_minutes_of_reading(tabs, reader):
    study = make_open_study(reader, images=4, break_every_minutes=30)
    tab = tabs()
    page = tab.page
    page.clock.install()  # the page's clock, moved on below as a reader's half hour would
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    tab.wait_ready()
    page.keyboard.press("r")
    tab.wait_ready()
    reminder = page.get_by_role("alert").filter(has_text="Time for a break?")
    expect(reminder).to_be_hidden()
    page.clock.fast_forward("31:00")
    page.keyboard.press("f")
    expect(reminder).to_be_visible()
    expect(reminder).to_contain_text("You have read 2 images in 31 minutes")
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("3 of 4")
