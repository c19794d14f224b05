"""A reader removed from a study reaches nothing of it; their answers stay, counted only when asked."""

import io

import pytest
from django.core.management import call_command

from studies.exports import answer_rows
from studies.models import Answer, Presentation, StudyReader
from studies.selectors import studies_for_reader
from studies.services import answer_submit, study_reader_add, study_reader_remove
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db


def answer_all(study, reader, label="real"):
    for presentation in Presentation.objects.filter(study=study, reader=reader).order_by("position"):
        answer_submit(presentation=presentation, label=label, viewing_ms=1000)


@pytest.fixture
def study(reader, outsider):
    """Two readers with a practice image each: `reader` answered half, then was removed."""
    study = make_open_study(reader, images=4, practice=1, readers=[outsider])
    mine = Presentation.objects.filter(study=study, reader=reader).order_by("position")
    for presentation in mine[:3]:
        answer_submit(presentation=presentation, label="fake", viewing_ms=900)
    answer_all(study, outsider)
    study_reader_remove(study=study, reader=reader)
    return study


def reader_urls(study, reader) -> dict:
    practice = Presentation.objects.get(study=study, reader=reader, is_practice=True)
    pending = Presentation.objects.filter(study=study, reader=reader, answer__isnull=True).first()
    return {
        "label page": ("get", f"/study/{study.pk}/"),
        "state": ("get", f"/study/{study.pk}/state"),
        "done page": ("get", f"/study/{study.pk}/done/"),
        "image": ("get", f"/p/{pending.pk}/image"),
        "answered image": ("get", f"/p/{practice.pk}/image"),
        "answer": ("post", f"/p/{pending.pk}/answer"),
        "practice feedback": ("post", f"/p/{practice.pk}/answer"),
    }


def test_a_removed_reader_gets_404_for_the_study_its_images_and_answers(client, study, reader):
    client.force_login(reader)
    for name, (method, path) in reader_urls(study, reader).items():
        response = getattr(client, method)(
            path, {"label": "real", "viewing_ms": "5"} if method == "post" else None
        )
        assert response.status_code == 404, name
    assert studies_for_reader(user=reader) == []
    assert Answer.objects.filter(presentation__study=study, presentation__reader=reader).count() == 3


def test_the_other_readers_keep_their_access(client, study, outsider):
    client.force_login(outsider)
    assert client.get(f"/study/{study.pk}/done/").status_code == 200
    assert [row["study"] for row in studies_for_reader(user=outsider)] == [study]


def test_adding_a_removed_reader_again_restores_their_place_sequence_and_answers(client, study, reader):
    place = StudyReader.objects.get(study=study, reader=reader)
    sequence = list(Presentation.objects.filter(study=study, reader=reader).order_by("position"))
    study_reader_add(study=study, reader=reader)
    again = StudyReader.objects.get(study=study, reader=reader)
    assert (again.removed, again.number, again.seed) == (None, place.number, place.seed)
    assert list(Presentation.objects.filter(study=study, reader=reader).order_by("position")) == sequence
    client.force_login(reader)
    state = client.get(f"/study/{study.pk}/state").json()
    assert state["current"]["id"] == str(sequence[3].pk)  # where they stopped


def test_results_leave_a_removed_reader_out_unless_asked(study):
    assert {row["reader"] for row in answer_rows(study)} == {"R002"}
    with_removed = list(answer_rows(study, include_removed=True))
    assert {row["reader"] for row in with_removed} == {"R001", "R002"}
    assert len(with_removed) == 4 + 2  # their two study answers (practice never counts) and the other's four


def test_the_results_page_and_its_downloads_include_removed_readers_when_asked(client, researcher, study):
    client.force_login(researcher)
    page = client.get(f"/admin/studies/study/{study.pk}/results/").content.decode()
    assert "The answers of 1 reader removed from the study are left out" in page
    assert "R001 <span" not in page  # no row for the removed reader
    assert "4 of 4 reads so far" in page  # the removed reader's sequence is not expected either
    page = client.get(f"/admin/studies/study/{study.pk}/results/?include_removed=1").content.decode()
    assert "R001 <span" in page and "answers.csv?include_removed=1" in page
    csv_without = b"".join(
        client.get(f"/admin/studies/study/{study.pk}/results/answers.csv").streaming_content
    )
    csv_with = b"".join(
        client.get(f"/admin/studies/study/{study.pk}/results/answers.csv?include_removed=1").streaming_content
    )
    assert b"R001" not in csv_without and b"R001" in csv_with


def test_export_results_counts_removed_readers_only_with_include_removed(study, tmp_path):
    call_command(
        "export_results",
        str(study.pk),
        "--out",
        str(tmp_path / "a"),
        "--bootstrap",
        "20",
        stdout=io.StringIO(),
    )
    call_command(
        "export_results",
        str(study.pk),
        "--out",
        str(tmp_path / "b"),
        "--bootstrap",
        "20",
        "--include-removed",
        stdout=io.StringIO(),
    )
    assert "R001" not in (tmp_path / "a" / "answers.csv").read_text()
    assert "R001" in (tmp_path / "b" / "answers.csv").read_text()


def test_a_researcher_confirms_before_a_reader_is_removed(client, researcher, reader):
    study = make_open_study(reader, images=2)
    client.force_login(researcher)
    url = f"/admin/studies/study/{study.pk}/remove-reader/"
    confirm = client.post(url, {"reader": reader.pk})
    assert confirm.status_code == 200 and b"Remove reader (R001)" in confirm.content
    assert StudyReader.objects.get(study=study, reader=reader).removed is None
    assert client.get(url).status_code == 405  # no GET changes anything, nor asks to
    assert client.post(url, {"reader": "abc", "confirm": "yes"}, follow=True).status_code == 200
    client.post(url, {"reader": reader.pk, "confirm": "yes"})
    assert StudyReader.objects.get(study=study, reader=reader).removed is not None


def test_a_removed_reader_can_be_picked_again_on_the_readers_page(client, researcher, study, reader):
    client.force_login(researcher)
    page = client.get(f"/admin/studies/study/{study.pk}/readers/").content.decode()
    assert "Removed " in page and f'<option value="{reader.pk}">reader</option>' in page
    client.post(f"/admin/studies/study/{study.pk}/readers/", {"existing": [reader.pk], "new": ""})
    assert StudyReader.objects.get(study=study, reader=reader).removed is None


def test_a_link_asked_for_a_removed_or_made_up_reader_gets_a_message(client, researcher, study, reader):
    client.force_login(researcher)
    for posted in (str(reader.pk), "abc", ""):
        page = client.post(f"/admin/studies/study/{study.pk}/link/", {"reader": posted}, follow=True)
        assert page.status_code == 200
        assert "That reader is not in this study (any more)." in page.content.decode()
