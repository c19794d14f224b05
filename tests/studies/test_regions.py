"""Where an image gave itself away (issue 15): a point or a box marked on the image at any zoom,
in pixels of the image the reader saw, stored with the answer and exported."""

import csv
import io
import os
import re

import pytest
from playwright.sync_api import expect

from analysis.reads import answers_csv_chunks
from studies.exports import answer_rows
from studies.models import Answer, Presentation, StudyImage
from studies.selectors import reader_side
from studies.services import AnswerRefused, answer_submit
from tests.generation.test_training_admin import admin_log_in
from tests.studies.study_fixtures import make_open_study


def sequence(study, reader):
    return list(
        Presentation.objects.filter(study=study, reader=reader, is_practice=False).order_by("position")
    )


def region(kind, x0, y0, x1=None, y1=None):
    return {
        "kind": kind,
        "x0": str(x0),
        "y0": str(y0),
        "x1": str(x0 if x1 is None else x1),
        "y1": str(y0 if y1 is None else y1),
    }


@pytest.mark.django_db
def test_a_region_is_stored_in_pixels_of_the_image_seen_and_refused_where_not_asked_or_off_the_image(reader):
    study = make_open_study(reader, images=4, ask_region="fake", allow_back=True)
    first, second, third, _ = sequence(study, reader)
    assert reader_side(first) == first.image.size == 512  # no resized copy: the image itself
    answer = answer_submit(presentation=first, label="fake", viewing_ms=900, region=region("point", 10, 511))
    assert answer.region == {"kind": "point", "x0": 10, "y0": 511, "x1": 10, "y1": 511, "size": 512}
    for bad, problem in [
        (region("point", 10, 512), "y0 must be a whole pixel from 0 to 511, not '512'"),
        (region("point", "-1", 5), "x0 must be a whole pixel from 0 to 511, not '-1'"),
        (region("point", "1.5", 5), "x0 must be a whole pixel"),
        (region("point", 1, 5, 2, 5), "A point's two corners must be the same pixel"),
        (region("box", 9, 5, 2, 6), "first corner must be its top left"),
        (region("circle", 1, 1), "a point or a box, not 'circle'"),
    ]:
        with pytest.raises(AnswerRefused, match=re.escape(problem)):
            answer_submit(presentation=second, label="fake", viewing_ms=900, region=bad)
    with pytest.raises(AnswerRefused, match="does not ask for a region with this answer"):
        answer_submit(presentation=second, label="real", viewing_ms=900, region=region("point", 1, 1))
    assert not Answer.objects.filter(presentation=second).exists()
    answer_submit(presentation=second, label="fake", viewing_ms=900, region=region("box", 100, 200, 300, 260))
    answer_submit(presentation=third, label="fake", viewing_ms=900)  # optional here
    # Going back and moving the mark changes the answer.
    moved = answer_submit(presentation=first, label="fake", viewing_ms=100, region=region("point", 20, 30))
    assert (moved.region["x0"], moved.viewing_ms) == (20, 1000)
    rows = {
        int(row["image"]): row
        for row in csv.DictReader(io.StringIO("".join(answers_csv_chunks(answer_rows(study)))))
    }
    columns = ["region", "region_x0", "region_y0", "region_x1", "region_y1", "image_size"]
    assert [rows[first.image_id][c] for c in columns] == ["point", "20", "30", "20", "30", "512"]
    assert [rows[second.image_id][c] for c in columns] == ["box", "100", "200", "300", "260", "512"]
    assert [rows[third.image_id][c] for c in columns] == [""] * 6


@pytest.mark.django_db
def test_a_required_region_is_refused_when_missing_and_a_resized_copy_sets_the_bounds(reader):
    study = make_open_study(reader, images=2, ask_region="always", region_required=True, image_size=256)
    first, second = sequence(study, reader)
    with pytest.raises(AnswerRefused, match="Mark where on the image"):
        answer_submit(presentation=first, label="real", viewing_ms=900)
    # The study shows a 256-pixel copy of this image: a mark lies within that.
    StudyImage.objects.filter(study=study, image=first.image).update(file="studies/copy.png")
    first = Presentation.objects.get(pk=first.pk)
    assert reader_side(first) == 256
    with pytest.raises(AnswerRefused, match="from 0 to 255"):
        answer_submit(presentation=first, label="real", viewing_ms=900, region=region("point", 300, 3))
    answer = answer_submit(presentation=first, label="real", viewing_ms=900, region=region("point", 255, 3))
    assert answer.region["size"] == 256


def image_geometry(page):
    """The stage's centre and the side on screen of the square image at zoom 1 (object-fit: contain)."""
    box = page.locator("#stage").bounding_box()
    side = min(box["width"], box["height"])
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, side


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_reader_marks_a_point_by_a_click_and_a_box_by_a_drag_at_any_zoom(tabs, reader):
    study = make_open_study(reader, images=5, ask_region="fake", ask_reasons="fake", allow_back=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    app = page.locator("#label-app")
    marks = page.locator("#marks .mark:not(.is-earlier)")
    cx, cy, side = image_geometry(page)
    tab.wait_ready()
    # Before the label a click does not mark (the reader is looking): only after Fake.
    page.mouse.click(cx, cy)
    expect(marks).to_have_count(0)
    page.keyboard.press("f")
    expect(app).to_have_attribute("data-machine", "explaining")
    expect(page.locator("#region-hint")).to_be_visible()
    # The row that opens keeps its room while hidden: the image stays where the reader saw it.
    assert image_geometry(page) == (cx, cy, side)
    page.mouse.click(cx - side / 4, cy + side / 8)  # a point a quarter left, an eighth down
    expect(marks).to_have_count(1)
    expect(page.locator("#marks circle.mark")).to_have_count(1)
    page.keyboard.press("1")  # a reason as well
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 5")
    page.keyboard.press("r")  # real: nothing asked, sent at once
    tab.wait_ready()
    page.keyboard.press("f")
    # Zoomed in about the centre (1.25 ** 3), a drag draws a box; a second mark replaces the first.
    for _ in range(3):
        page.keyboard.press("+")
    scale = 1.25**3
    page.mouse.click(cx + 10, cy + 10)
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 40, cy + 20, steps=4)
    page.mouse.move(cx + 80, cy + 40, steps=4)
    page.mouse.up()
    expect(page.locator("#marks rect.mark")).to_have_count(1)
    expect(marks).to_have_count(1)
    page.keyboard.press("Enter")
    tab.wait_ready()
    # The fourth: marked, cleared with Delete, sent without a mark.
    page.keyboard.press("f")
    page.mouse.click(cx, cy)
    expect(marks).to_have_count(1)
    page.keyboard.press("Delete")
    expect(marks).to_have_count(0)
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(tab.progress()).to_have_text("5 of 5")
    answers = list(Answer.objects.filter(presentation__study=study).order_by("presentation__position"))
    assert [a.label for a in answers] == ["fake", "real", "fake", "fake"]
    assert answers[3].region is None
    point, box = answers[0].region, answers[2].region

    def pixel(offset, zoom=1.0):  # screen pixels from the centre -> image pixels (512 a side)
        return 256 + offset / (side * zoom) * 512

    assert point["kind"] == "point" and point["size"] == 512
    assert point["x0"] == pytest.approx(pixel(-side / 4), abs=1.5)
    assert point["y0"] == pytest.approx(pixel(side / 8), abs=1.5)
    assert answers[0].reasons == ["Anatomy"]
    assert answers[1].region is None
    assert box["kind"] == "box"
    assert box["x0"] == pytest.approx(pixel(0, scale), abs=1.5)
    assert box["y0"] == pytest.approx(pixel(0, scale), abs=1.5)
    assert box["x1"] == pytest.approx(pixel(80, scale), abs=1.5)
    assert box["y1"] == pytest.approx(pixel(40, scale), abs=1.5)
    # Back at the third image (past the fourth, unmarked), its box shows dashed while marking again.
    page.keyboard.press("b")
    tab.wait_ready()
    page.keyboard.press("b")
    tab.wait_ready()
    page.keyboard.press("f")
    expect(page.locator("#marks rect.mark.is-earlier")).to_have_count(1)
    page.keyboard.press("Escape")


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_where_a_region_is_required_the_page_asks_for_one_before_sending(tabs, reader):
    study = make_open_study(reader, images=2, ask_region="always", region_required=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    page.keyboard.press("Escape")
    tab.wait_ready()
    page.keyboard.press("r")
    expect(page.get_by_role("group", name=re.compile("What gave it away?"))).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(
        "Mark where on the image (click for a point, drag for a box), then send."
    )
    cx, cy, _ = image_geometry(page)
    page.mouse.click(cx, cy)
    page.get_by_role("button", name=re.compile("^Send")).click()
    tab.wait_ready()
    answer = Answer.objects.get(presentation__study=study, presentation__position=0)
    assert answer.region["kind"] == "point" and answer.region["x0"] == pytest.approx(256, abs=1.5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_a_researcher_sees_reasons_heat_maps_and_the_images_most_often_called_fake(
    tabs, reader, outsider, researcher, tmp_path
):
    study = make_open_study(reader, images=8, readers=[outsider], ask_reasons="fake", ask_region="fake")
    # Every synthetic image called fake with Bones and a box at its top left; every real image
    # called real, but one, called fake with Anatomy and a point (the readers' own pages are
    # tested above: here their answers are given directly).
    real_called_fake = None
    for presentation in Presentation.objects.filter(study=study).order_by("reader", "position"):
        if presentation.image.origin == "synthetic":
            answer_submit(
                presentation=presentation,
                label="fake",
                viewing_ms=1000,
                reasons=["Bones"],
                region=region("box", 0, 0, 127, 63),
            )
        elif real_called_fake in (None, presentation.image_id):
            real_called_fake = presentation.image_id
            answer_submit(
                presentation=presentation,
                label="fake",
                viewing_ms=1000,
                reasons=["Anatomy"],
                region=region("point", 256, 300),
            )
        else:
            answer_submit(presentation=presentation, label="real", viewing_ms=1000)
    tab = tabs(viewport={"width": 1400, "height": 900})
    page = tab.page
    admin_log_in(tab)
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    page.get_by_role("link", name="Results (interim)").click()
    section = page.get_by_role("region", name="Why and where readers called images fake")
    if not section.count():  # the panel is a div labelled by its heading
        section = page.locator("[aria-labelledby=results-giveaways]")
    expect(section.get_by_role("heading", name="Why and where readers called images fake")).to_be_visible()
    counts = page.locator("#reason-counts")
    # Two readers, two synthetic images per model: 4 reads called each model's images fake, all with Bones.
    expect(counts.get_by_role("row", name=re.compile("^Bones"))).to_contain_text("4 (100%)")
    expect(counts.get_by_role("row", name=re.compile("^Anatomy"))).to_contain_text("2 (100%)")
    expect(counts.locator("thead")).to_contain_text("Real images")
    heatmaps = page.get_by_role("img", name=re.compile("Heat maps of the regions readers marked"))
    expect(heatmaps).to_be_visible()
    assert heatmaps.bounding_box()["width"] > 300
    expect(heatmaps).to_contain_text("cxr-diffusion · 4 marks")
    expect(heatmaps).to_contain_text("Real images · 2 marks")
    synthetic = page.locator("#gallery-synthetic .giveaway")
    expect(synthetic).to_have_count(4)
    expect(synthetic.first).to_contain_text("called fake by 2 of 2 readers, 2 marks")
    expect(synthetic.first.locator("svg rect")).to_have_count(2)
    picture = synthetic.first.locator("img")
    picture.scroll_into_view_if_needed()  # loaded lazily
    page.wait_for_function("img => img.complete && img.naturalWidth === 512", arg=picture.element_handle())
    real = page.locator("#gallery-real .giveaway")
    expect(real).to_have_count(1)
    expect(real).to_contain_text(f"Image {real_called_fake}")
    expect(real.locator("svg circle")).to_have_count(2)
    expect(real).to_contain_text("Anatomy 2")
    if os.environ.get("RESULTS_SCREENSHOT"):
        section.screenshot(path=os.environ["RESULTS_SCREENSHOT"])
    # The files behind the figures, from the downloads.
    for name, first_line in [
        ("reasons.csv", "group,truth,reason,n_called_fake,n_with_reason,share"),
        ("regions.csv", "study,reader,image,truth,model,label,reasons,region,"),
    ]:
        with page.expect_download() as download:
            page.get_by_role("link", name=name, exact=True).click()
        path = tmp_path / name
        download.value.save_as(path)
        lines = path.read_text().splitlines()
        assert lines[0].startswith(first_line)
    regions = list(csv.DictReader(io.StringIO((tmp_path / "regions.csv").read_text())))
    assert len(regions) == 8 + 2
    assert {(r["region"], r["region_x1"], r["image_size"]) for r in regions if r["truth"] == "fake"} == {
        ("box", "127", "512")
    }
