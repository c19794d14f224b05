"""A study labelled in Chromium, then its results page and downloads, as a researcher uses them."""

import io
import os
import re
import zipfile

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from studies.models import Answer
from studies.results import study_results
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
# The plots of the results page of a study with two models and two readers, by their labels.
RESULTS_PLOTS = (
    "Forest plot: accuracy",
    "Forest plot: difference",
    "Heatmap of pairwise",
    "Unsure rates",
    "Reading time",
)


def label_all(tab, study, keys):
    tab.open_study(study)
    for key in keys:
        tab.wait_ready()
        tab.page.keyboard.press(key)
    expect(tab.page).to_have_url(re.compile(rf"/study/{study.pk}/done/$"))


def test_results_of_a_study_labelled_in_the_browser(tabs, reader, outsider, researcher, tmp_path):
    outsider.set_password("outsider-pass")
    outsider.save()
    study = make_open_study(reader, images=6, readers=[outsider])
    first = tabs()
    first.log_in("reader", "reader-pass")
    label_all(first, study, ["r", "f", "u", "f", "r", "r"])
    second = tabs()
    second.log_in("outsider", "outsider-pass")
    label_all(second, study, ["f", "f", "r", "r", "u", "f"])
    assert Answer.objects.filter(presentation__study=study).count() == 12

    tab = tabs(viewport={"width": 1400, "height": 900})
    page = tab.page
    page.goto(tab.base_url + "/admin/login/")
    page.get_by_label("Username").fill("researcher")
    page.get_by_label("Password").fill("researcher-pass")
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    page.get_by_role("link", name="Results (interim)").click()
    expect(page.get_by_role("heading", name="Interim results")).to_be_visible()
    expect(page.get_by_text("12 of 12 reads so far")).to_be_visible()
    for name in RESULTS_PLOTS:
        plot = page.get_by_role("img", name=re.compile(name))
        expect(plot).to_be_visible()
        assert plot.bounding_box()["width"] > 300
    # The MRMC table: the reader-averaged AUC of each arm as the analysis gives it, the pooled apart.
    summary = study_results(study).summary
    expect(page.get_by_role("heading", name="AUC across readers and images (MRMC)")).to_be_visible()
    arms = page.locator("#mrmc-arms tbody tr")
    expect(arms).to_have_count(1 + len(summary.models))
    for k, group in enumerate(["all", *summary.models]):
        row = summary.pooled(group)
        cells = arms.nth(k).locator("td")
        expect(cells.nth(0)).to_have_text(f"{row['auc_mrmc']:.3f}")
        expect(cells.nth(5)).to_have_text(f"{row['auc']:.3f}")  # the pooled AUC, named apart
    (comparison,) = summary.comparisons
    first_row = page.locator("#arm-comparisons tbody tr").first
    expect(first_row).to_contain_text(comparison["model_a"])
    expect(first_row.locator("td").nth(2)).to_have_text(f"{comparison['difference']:.3f}")
    if os.environ.get("RESULTS_SCREENSHOT"):
        page.screenshot(path=os.environ["RESULTS_SCREENSHOT"], full_page=True)

    with page.expect_download() as download:
        page.get_by_role("link", name="All files (.zip)").click()
    saved = tmp_path / "results.zip"
    download.value.save_as(saved)
    archive = zipfile.ZipFile(saved)
    archive.extractall(tmp_path / "zip")
    answers = (tmp_path / "zip" / "answers.csv").read_text().splitlines()
    assert len(answers) == 13 and "reader" not in "".join(answers[1:]).split(",")
    call_command(
        "analyze_csv",
        str(tmp_path / "zip" / "answers.csv"),
        "--out",
        str(tmp_path / "again"),
        stdout=io.StringIO(),
    )
    for name in ("summary.csv", "cohen_kappa.csv", "arm_comparisons.csv", "imrmc_all.csv"):
        assert (tmp_path / "again" / name).read_bytes() == archive.read(name), name

    with page.expect_download() as download:
        page.get_by_role("link", name="summary.csv").click()
    assert download.value.suggested_filename == f"study-{study.pk}-summary.csv"
    download.value.save_as(tmp_path / "summary.csv")
    assert (tmp_path / "summary.csv").read_bytes() == archive.read("summary.csv")
    with page.expect_download() as download:
        page.get_by_role("link", name="arm_comparisons.csv").click()
    download.value.save_as(tmp_path / "arm_comparisons.csv")
    assert (tmp_path / "arm_comparisons.csv").read_bytes() == archive.read("arm_comparisons.csv")
    assert archive.read("arm_comparisons.csv").decode().startswith("model_a,model_b,auc_a,auc_b,difference,")
