"""A researcher takes a study through its whole life in Chromium, only by clicking what a person clicks.

Then the database is checked, not only the page: a green page whose buttons post
the wrong form (the admin's own, around them) was once the whole bug.
"""

import csv
import io
import re
import zipfile

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from generation.models import GeneratedImage, GenerativeModel
from studies.imaging.phantoms import phantom
from studies.models import Answer, Image, ImageSet, Presentation, Study, StudyImage, StudyModel, StudyReader
from studies.services import study_reader_add
from tests.generation.models import built
from tests.studies.files import png16
from tests.studies.study_fixtures import make_images

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.services]

SLOW = 90_000  # ms: what a worker does (import, generate, draw and audit) on two shared cores


def admin_log_in(tab, username="researcher", password="researcher-pass"):
    tab.page.goto(tab.base_url + "/admin/")
    tab.page.get_by_label("Username").fill(username)
    tab.page.get_by_label("Password").fill(password)
    tab.page.get_by_role("button", name="Log in").click()
    expect(tab.page.get_by_role("heading", name="Studies, images and models")).to_be_visible()


def phantom_zip(count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index in range(count):
            archive.writestr(f"export/cxr_{index:03d}.png", png16(phantom(index, 320)))
        archive.writestr("export/notes.txt", b"not an image")
    return out.getvalue()


def current_step(page):
    return page.get_by_role("list", name="Life of the study").locator("[aria-current=step]")


def import_a_set(page, tmp_path) -> ImageSet:
    page.get_by_role("link", name="Image sets").first.click()
    page.get_by_role("link", name="Add image set").click()
    page.locator("#id_name").fill("PACS export 2026")
    page.get_by_role("button", name="Save and continue editing").click()
    page.get_by_role("link", name="Import images").click()
    archive = tmp_path / "export.zip"
    archive.write_bytes(phantom_zip(10))
    page.locator("input[type=file]").first.set_input_files(str(archive))
    page.get_by_role("button", name="Upload and import").click()
    # The import's own page: its progress bar, then the per-file report.
    expect(page.get_by_role("progressbar", name="Import progress")).to_be_visible()
    expect(page.locator("p").filter(has_text="Done: 11 of 11 files")).to_be_visible(timeout=SLOW)
    expect(page.locator("p").filter(has_text="10 imported, 0 duplicate, 1 refused")).to_be_visible()
    image_set = ImageSet.objects.get(name="PACS export 2026")
    assert image_set.images.filter(origin=Image.Origin.REAL).count() == 10
    return image_set


def register_and_preview_a_model(page) -> GenerativeModel:
    page.goto(page.url.split("/admin/")[0] + "/admin/generation/generativemodel/add/")
    page.locator("#id_name").fill("tiny-ddpm")
    page.locator("#id_path").fill(str(built("ddpm")))
    page.locator("#id_steps").fill("2")
    page.locator("#id_batch_size").fill("4")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.get_by_text("was added successfully")).to_be_visible()
    model = GenerativeModel.objects.get(name="tiny-ddpm")
    assert model.current_version.steps == 2
    expect(page.locator("#id_path")).to_have_count(0)  # fixed once registered: shown, not a box

    page.get_by_role("button", name="Preview (4 images)").click()
    # The job's page refreshes itself until the four images show.
    expect(page.locator("p").filter(has_text="Done: 4 of 4 images")).to_be_visible(timeout=SLOW)
    expect(page.get_by_role("img", name="seed 3")).to_be_visible()
    page.get_by_role("link", name="Generative models").first.click()
    page.get_by_role("link", name="tiny-ddpm").click()
    expect(page.get_by_role("img", name="seed 3")).to_be_visible()
    assert GeneratedImage.objects.filter(version__model=model).count() == 4
    return model


def add_a_study(page, image_set, model) -> Study:
    page.goto(page.url.split("/admin/")[0] + "/admin/")
    page.get_by_role("row", name="Studies").get_by_role("link", name="Add").click()
    page.locator("#id_title").fill("Chest X-ray realism, pilot")
    page.locator("#id_instructions").fill("Label each image **real** or **fake**.")
    # The two-box selector: pick the set under "Available", move it to "Chosen".
    page.locator("#id_real_sets_from").select_option(label=image_set.name)
    page.locator("#id_real_sets_add").click()
    expect(page.locator("#id_real_sets_to option")).to_have_text([image_set.name])
    expect(page.locator("#id_real_sets_from option")).to_have_count(0)
    page.locator("#id_real_count").fill("6")
    page.locator("#id_practice_count").fill("2")
    page.locator("#id_ask_confidence").check()
    page.locator("#id_arms-0-model").select_option(label=model.name)
    page.locator("#id_arms-0-count").fill("6")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.get_by_text("was added successfully")).to_be_visible()
    study = Study.objects.get(title="Chest X-ray realism, pilot")
    assert list(study.real_sets.all()) == [image_set]
    assert (study.real_count, study.practice_count, study.ask_confidence) == (6, 2, True)
    assert study.arms.get().count == 6
    expect(current_step(page)).to_have_text("Draft")
    return study


def test_a_researcher_takes_a_study_through_its_life_by_clicking(
    tabs,
    researcher,
    reader,
    celery_workers,
    tmp_path,
):
    tab = tabs(viewport={"width": 1400, "height": 900})
    page = tab.page
    page.set_default_timeout(20_000)
    _, worker = celery_workers.start()
    admin_log_in(tab)

    image_set = import_a_set(page, tmp_path)
    model = register_and_preview_a_model(page)
    study = add_a_study(page, image_set, model)

    # Prepare with no worker about: the page shows the job waiting, with its progress bar.
    worker.terminate()
    worker.wait(timeout=60)
    page.get_by_role("button", name="Prepare").click()
    expect(current_step(page)).to_have_text("Preparing")
    expect(page.get_by_role("progressbar", name=f"Images of {model.name}")).to_be_visible()
    study.refresh_from_db()
    assert study.status == Study.Status.PREPARING
    # 6 study images and 1 practice image of the model, 4 made by the preview: 3 to make.
    assert study.arms.get().job.count == 3
    # A worker comes: it makes the images, draws the study and runs the audit, with nobody
    # doing anything (the page only shows what happened).
    celery_workers.start()
    expect(current_step(page)).to_have_text("Ready", timeout=SLOW)
    study.refresh_from_db()
    assert study.status == Study.Status.READY
    assert study.images.filter(practice=False).count() == 12
    assert study.images.filter(practice=True).count() == 2
    expect(page.get_by_role("heading", name="Blinding audit")).to_be_visible()

    # Run the audit again, then back to draft and prepare again: a new draw, with a new seed.
    first_seed = study.selection_seed
    page.get_by_role("button", name="Run the audit again").click()
    expect(page.get_by_text("The blinding audit was run again.")).to_be_visible()
    page.get_by_role("button", name="Back to draft").click()
    expect(page.get_by_text("The study is a draft again.")).to_be_visible()
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT and study.images.count() == 0
    page.get_by_role("button", name="Prepare").click()
    expect(current_step(page)).to_have_text("Ready", timeout=SLOW)
    study.refresh_from_db()
    assert study.status == Study.Status.READY and study.images.count() == 14
    assert study.selection_seed not in (None, first_seed)

    # Readers: an existing account, and a new one from a line.
    page.get_by_role("link", name="Add readers").click()
    expect(page.locator("#id_existing option")).to_have_text(["reader"])  # no staff account offered
    page.locator("#id_existing").select_option(label="reader")
    page.locator("#id_new").fill("dr_lee lee@example.org")
    page.get_by_role("button", name="Add readers").click()
    expect(page.get_by_text("2 readers added.")).to_be_visible()
    link = page.get_by_role("textbox", name="Link for dr_lee").input_value()
    assert set(StudyReader.objects.filter(study=study).values_list("reader__username", flat=True)) == {
        "reader",
        "dr_lee",
    }
    # Only an account without a password gets a new link.
    expect(page.get_by_role("button", name="New one-time link for dr_lee")).to_be_visible()
    expect(page.get_by_role("button", name="New one-time link for reader")).to_have_count(0)
    # Say the first link was lost: a new one replaces it.
    page.get_by_role("button", name="New one-time link for dr_lee").click()
    message = page.get_by_text("A new one-time link for dr_lee:")
    expect(message).to_be_visible()
    link = re.search(r"http://\S+/accounts/reset/\S+/", message.inner_text()).group(0)

    # dr_lee uses the link in a browser of their own.
    newcomer = tabs()
    newcomer.page.goto(link)
    newcomer.page.get_by_label("New password", exact=True).fill("a long new password 7")
    newcomer.page.get_by_label("The same password again").fill("a long new password 7")
    newcomer.page.get_by_role("button", name="Set password").click()
    expect(newcomer.page.get_by_role("link", name="Log in")).to_be_visible()
    assert get_user_model().objects.get(username="dr_lee").check_password("a long new password 7")
    newcomer.page.get_by_role("link", name="Log in").click()
    newcomer.log_in("dr_lee", "a long new password 7")
    newcomer.page.goto(link)  # used once: dead now
    expect(newcomer.page.get_by_role("heading", name="This link no longer works")).to_be_visible()

    # Open: the audit warns (noise against phantoms), so only "Open anyway" with a reason.
    page.get_by_role("link", name=study.title).first.click()
    expect(page.get_by_role("button", name="Open the study")).to_have_count(0)
    page.get_by_label(re.compile("To open anyway, give a reason")).fill("Pilot of the pages")
    page.get_by_role("button", name="Open anyway").click()
    expect(page.get_by_text("The study is open: its readers can start.")).to_be_visible()
    expect(current_step(page)).to_have_text("Open")
    study.refresh_from_db()
    assert study.status == Study.Status.OPEN and study.override_reason == "Pilot of the pages"
    assert Presentation.objects.filter(study=study, reader=reader).count() == 14
    # "Open since 2 Dec 2026, 01:05 UTC (by researcher)." - one full stop.
    opened = page.locator("p").filter(has_text="Open since")
    when = r"\d+ \w+ \d{4}, \d\d:\d\d UTC"
    expect(opened).to_have_text(re.compile(rf"^Open since {when} \(by researcher\)\.\s+12 images"))

    # The instructions of an open study can still be edited, with the admin's own Save.
    page.locator("#id_instructions").fill("Label each image. Take your time.")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was changed successfully")).to_be_visible()
    study.refresh_from_db()
    assert study.instructions == "Label each image. Take your time."

    # A reader answers two images; the study page shows their progress.
    reading = tabs()
    reading.log_in("reader", "reader-pass")
    reading.open_study(study)
    for keys in (["r", "3"], ["f", "4"]):  # the two practice images, each with its feedback
        reading.wait_ready()
        for key in keys:
            reading.page.keyboard.press(key)
        expect(reading.page.get_by_role("button", name="Continue")).to_be_focused()
        reading.page.keyboard.press("Enter")
    reading.wait_ready()
    for key in ("u", "2"):  # one study image
        reading.page.keyboard.press(key)
    reading.wait_ready()
    assert Answer.objects.filter(presentation__study=study).count() == 3
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    progress = page.locator("tr").filter(has=page.get_by_role("progressbar", name="Progress of reader"))
    expect(progress).to_contain_text("1 / 12")

    # Results, and each download.
    page.get_by_role("link", name="Results (interim)").click()
    expect(page.get_by_role("heading", name="Interim results")).to_be_visible()
    fits = page.evaluate(
        "() => [...document.querySelectorAll('.results-scroll')].every(s => s.scrollWidth <= s.clientWidth)"
    )
    assert fits, "a results table needs sideways scrolling at 1400 px"
    expect(page.locator("#mrmc-arms tbody tr")).to_have_count(2)  # all models, the one arm
    expect(page.locator("#no-arm-comparisons")).to_be_visible()  # one model: nothing to compare
    names = [
        "answers.csv",
        "summary.csv",
        "cohen_kappa.csv",
        "arm_comparisons.csv",
        "imrmc_tiny-ddpm.csv",
        "imrmc_all.csv",
        "All files (.zip)",
    ]
    for name in names:
        with page.expect_download() as download:
            page.get_by_role("link", name=name, exact=True).click()
        content = download.value.path().read_bytes()
        if name == "All files (.zip)":
            assert "answers.csv" in zipfile.ZipFile(io.BytesIO(content)).namelist()
        else:
            assert list(csv.reader(io.StringIO(content.decode())))[0], name
    # Close.
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    page.get_by_role("button", name="Close the study").click()
    expect(page.get_by_text("The study is closed.")).to_be_visible()
    study.refresh_from_db()
    assert study.status == Study.Status.CLOSED
    expect(page.get_by_text(re.compile(r"^Closed \d+ \w+ \d{4}, \d\d:\d\d \w+\. Readers"))).to_be_visible()


def test_a_study_whose_audit_passes_opens_with_the_plain_button(tabs, researcher, reader):
    study = Study.objects.create(title="Lifelike model", status=Study.Status.READY, real_count=10)
    images = make_images(20, models=("lifelike",), lifelike=True)
    StudyImage.objects.bulk_create(StudyImage(study=study, image=image) for image in images)
    version = images[1].generated.version
    StudyModel.objects.create(study=study, model=version.model, count=10, version=version)
    study_reader_add(study=study, reader=reader)

    tab = tabs(viewport={"width": 1400, "height": 900})
    page = tab.page
    admin_log_in(tab)
    page.get_by_role("row", name="Studies").get_by_role("link", name="Studies").click()
    page.get_by_role("link", name="Lifelike model").click()
    expect(page.get_by_role("button", name="Open anyway")).to_have_count(0)
    page.get_by_role("button", name="Open the study").click()
    expect(page.get_by_text("The study is open: its readers can start.")).to_be_visible()
    study.refresh_from_db()
    assert study.status == Study.Status.OPEN and study.override_reason == ""
    assert study.audit_report["rows"] and all(not row["warn"] for row in study.audit_report["rows"])
    assert Presentation.objects.filter(study=study, reader=reader).count() == 20
