"""A study's machine measures beside its readers' verdict: the results page, metrics.csv in the
downloads, the zip and export_results. The measures come from a real measure job run in the test's
process (random-weight extractors, tests/conftest.py `weights`)."""

import csv
import io
import zipfile

import pytest
from django.core.management import call_command
from playwright.sync_api import expect
from scipy import stats

from generation.measure_jobs import measure_job_create, measure_run
from studies.exports import metrics_text
from studies.results import study_results
from tests.generation.test_training_admin import admin_log_in
from tests.studies.study_fixtures import make_open_study
from tests.studies.test_exports import answer_everything

ARMS = ("cxr-a", "cxr-b", "cxr-c")


def measured_study(reader, outsider, weights, settings):
    """An open study of 3 arms (2 synthetic images each) and 6 real images, read by two readers,
    measured on XRV features alone (quicker)."""
    settings.METRICS_INCEPTION_WEIGHTS = str(weights / "absent.pth")
    study = make_open_study(reader, images=12, readers=[outsider], models=ARMS)
    answer_everything(study)
    job = measure_job_create(study=study)
    measure_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done", job.error
    return study, job


def rows_of(text: str) -> dict:
    return {(r["model"], r["measure"], r["extractor"]): r for r in csv.DictReader(io.StringIO(text))}


@pytest.mark.django_db
def test_metrics_csv_states_each_figure_with_what_it_was_computed_on_beside_the_readers(
    reader, outsider, weights, settings, client, researcher, tmp_path
):
    study, job = measured_study(reader, outsider, weights, settings)
    summary = study_results(study).summary
    text = metrics_text(study, summary)
    rows = rows_of(text)
    for model in ARMS:
        figures = job.results["arms"][model]["extractors"]["xrv-densenet121"]
        readers = summary.pooled(model)
        fd = rows[(model, "frechet_distance", "xrv-densenet121")]
        assert float(fd["value"]) == pytest.approx(figures["frechet_distance"], rel=1e-5)
        assert (fd["weights_sha256"], fd["resolution"]) == (figures["weights_sha256"], "224")
        assert (fd["n_synthetic"], fd["n_real"], fd["measure_job"]) == ("2", "6", str(job.pk))
        for key in ("fool_rate", "accuracy", "auc"):
            assert float(fd[key]) == pytest.approx(readers[key], rel=1e-5)
        kid = rows[(model, "kid", "xrv-densenet121")]
        assert float(kid["ci_low"]) <= float(kid["value"]) <= float(kid["ci_high"])
        assert "absent.pth" in rows[(model, "skipped", "inception-v3-fid")]["note"]
        assert rows[(model, "ms_ssim_synthetic", "")]["note"] == "mean over 1 pairs"
        assert rows[(model, "share_flagged_reference", "xrv-densenet121")]["note"].startswith(
            "flagged at cosine >= "
        )
        assert (model, "precision", "xrv-densenet121") not in rows  # 2 images: not more than k = 5
    # The zip, the single download and export_results hold the same file.
    client.force_login(researcher)
    base = f"/admin/studies/study/{study.pk}/results/"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(client.get(base + "results.zip").streaming_content)))
    assert archive.read("metrics.csv").decode() == text
    assert "metrics.csv holds the machine measures" in archive.read("README.txt").decode()
    assert client.get(base + "metrics.csv").content.decode() == text
    call_command("export_results", str(study.pk), "--out", str(tmp_path / "out"), stdout=io.StringIO())
    assert (tmp_path / "out" / "metrics.csv").read_text() == text
    # The page: a row per arm, and each measure's rank correlation with the fool rate.
    html = client.get(base).content.decode()
    assert "Machine measures" in html and f"measure job {job.pk}</a>" in html
    section = html[html.index('id="measure-correlations"') :]
    fd = [job.results["arms"][m]["extractors"]["xrv-densenet121"]["frechet_distance"] for m in ARMS]
    fool = [summary.pooled(m)["fool_rate"] for m in ARMS]
    rho = stats.spearmanr(fd, fool).statistic
    row = section.split("Fréchet distance (xrv-densenet121)</th>")[1].split("</tr>")[0]
    assert '<td class="num">3</td>' in row and f'<td class="num">{rho:.3f}</td>' in row


@pytest.mark.django_db
def test_a_study_never_measured_says_how_and_exports_no_metrics(reader, client, researcher):
    study = make_open_study(reader, images=4)
    answer_everything(study)
    client.force_login(researcher)
    base = f"/admin/studies/study/{study.pk}/results/"
    html = client.get(base).content.decode()
    assert "No machine measures yet." in html and "metrics.csv" not in html
    archive = zipfile.ZipFile(io.BytesIO(b"".join(client.get(base + "results.zip").streaming_content)))
    assert "metrics.csv" not in archive.namelist()
    assert "metrics.csv" not in archive.read("README.txt").decode()
    assert client.get(base + "metrics.csv").status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.browser
def test_the_results_page_shows_the_machine_measures_with_their_plot_in_chromium(
    reader, outsider, weights, settings, tabs, researcher, tmp_path
):
    study, job = measured_study(reader, outsider, weights, settings)
    tab = tabs(viewport={"width": 1400, "height": 900})
    page = tab.page
    admin_log_in(tab)
    page.goto(f"{tab.base_url}/admin/studies/study/{study.pk}/change/")
    page.get_by_role("link", name="Results (interim)").click()
    expect(page.get_by_role("heading", name="Machine measures")).to_be_visible()
    table = page.locator("#machine-measures")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("thead")).to_contain_text("Fréchet distance (xrv-densenet121)")
    plot = page.get_by_role("img", name="Scatter plots: each machine measure against the readers' fool rate")
    expect(plot).to_be_visible()
    assert plot.bounding_box()["width"] > 300
    page.get_by_role("link", name=f"measure job {job.pk}").click()
    expect(
        page.get_by_role("heading", name="Arm cxr-a: Measures of 2 synthetic images against 6 real")
    ).to_be_visible()
    page.go_back()
    with page.expect_download() as download:
        page.get_by_role("link", name="metrics.csv").click()
    download.value.save_as(tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text() == metrics_text(study, study_results(study).summary)
