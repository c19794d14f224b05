"""The results page of a study and its downloads, for researchers only."""

import io
import zipfile

import pytest

from analysis.files import summary_csv
from studies.lifecycle import study_close
from studies.results import study_results
from tests.studies.study_fixtures import make_open_study
from tests.studies.test_exports import answer_everything

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(reader, outsider):
    study = make_open_study(reader, images=8, readers=[outsider])
    answer_everything(study, skip=lambda p: p.reader == outsider and p.position > 4)
    return study


def url(study, name=""):
    return f"/admin/studies/study/{study.pk}/results/{name}"


def test_the_results_page_shows_interim_tables_and_plots(client, researcher, study):
    client.force_login(researcher)
    page = client.get(url(study))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Interim results" in html and "13 of 16 reads so far" in html
    assert "Accuracy per arm" in html and "cxr-diffusion" in html and "Real images only" in html
    assert html.count('<svg role="img"') == 5  # forest, arm comparisons, unsure, kappa heatmap, reading time
    assert "AUC across readers and images (MRMC)" in html and 'id="arm-comparisons"' in html
    assert "Forest plot" in html and "currentColor" in html
    plots = html[html.index('<svg role="img"') :]
    assert "http" not in plots.replace('"http://www.w3.org/', "")  # nothing to fetch
    assert "R001 <span" in html and "(reader)" in html  # the login behind a pseudonym, on this page only


def test_a_closed_study_has_final_results(client, researcher, study):
    study_close(study=study)
    client.force_login(researcher)
    html = client.get(url(study)).content.decode()
    assert "Final results" in html and "Interim" not in html


def test_a_study_without_answers_says_so(client, researcher, reader):
    empty = make_open_study(reader, images=4)
    client.force_login(researcher)
    html = client.get(url(empty)).content.decode()
    assert "No answers yet" in html and '<svg role="img"' not in html


def test_the_study_page_links_to_its_results(client, researcher, study):
    client.force_login(researcher)
    html = client.get(f"/admin/studies/study/{study.pk}/change/").content.decode()
    assert url(study) in html and "Results (interim)" in html


@pytest.mark.parametrize("name", ["", "answers.csv", "summary.csv", "results.zip"])
def test_readers_never_reach_results(client, reader, study, name):
    client.force_login(reader)
    response = client.get(url(study, name))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_answers_csv_streams_as_an_attachment(client, researcher, study):
    client.force_login(researcher)
    response = client.get(url(study, "answers.csv"))
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="study-{study.pk}-answers.csv"'
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 1 + 13


def test_the_summary_download_is_the_analysis_of_the_page(client, researcher, study):
    client.force_login(researcher)
    response = client.get(url(study, "summary.csv"))
    assert response.status_code == 200
    assert response.content.decode() == summary_csv(study_results(study).summary)
    assert client.get(url(study, "imrmc_cxr-latent.csv")).status_code == 200
    assert client.get(url(study, "secrets.txt")).status_code == 404


def test_the_zip_download_holds_every_file(client, researcher, study):
    client.force_login(researcher)
    response = client.get(url(study, "results.zip"))
    assert response.streaming and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert {"answers.csv", "summary.csv", "cohen_kappa.csv", "README.txt"} <= set(archive.namelist())


def test_results_are_recomputed_when_an_answer_arrives(researcher, study):
    before = study_results(study)
    assert study_results(study) is before or study_results(study).summary.rows == before.summary.rows
    from studies.models import Presentation
    from studies.services import answer_submit

    pending = Presentation.objects.filter(study=study, answer__isnull=True).first()
    answer_submit(presentation=pending, label="fake", viewing_ms=900)
    assert study_results(study).summary.n_reads == before.summary.n_reads + 1


def test_a_model_name_that_looks_like_tex_is_drawn_as_text(client, researcher, study):
    from generation.models import GenerativeModel

    GenerativeModel.objects.filter(name="cxr-latent").update(name=r"lat$\frac$ <b>")
    client.force_login(researcher)
    page = client.get(url(study))
    assert page.status_code == 200
    html = page.content.decode()
    assert "could not be drawn" not in html
    assert r"lat$\frac$ &lt;b&gt;" in html and "<b>" not in html.split("<svg role", 1)[1]


def test_a_note_on_empty_accuracy_cells_sits_under_the_accuracy_table_not_in_the_agreement_table(
    client, researcher, study
):
    client.force_login(researcher)
    html = client.get(url(study)).content.decode()
    accuracy = html[html.index('id="results-accuracy"') : html.index('id="results-agreement"')]
    agreement = html[html.index('id="results-agreement"') : html.index('id="results-confusion"')]
    # The real images alone have no synthetic image: their detection and fool rates are empty.
    assert "<strong>Real images only</strong>: sensitivity" in accuracy
    assert "no synthetic" not in agreement


def test_a_note_names_the_table_whose_empty_cells_it_explains():
    from studies.admin.results import _notes

    accuracy, agreement = _notes(
        "sensitivity, fool_rate: no synthetic images; intra_reader_kappa: no repeats; "
        "Fleiss' kappa on the 4 images read by all 2 readers; one reader: the bootstrap resamples images only"
    )
    assert accuracy == [
        "sensitivity, fool_rate: no synthetic images",
        "one reader: the bootstrap resamples images only",
    ]
    assert agreement == [
        "intra_reader_kappa: no repeats",
        "Fleiss' kappa on the 4 images read by all 2 readers",
    ]
