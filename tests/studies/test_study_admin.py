"""A researcher designs, prepares, opens and closes a study in the admin, and manages its readers."""

import pytest

from generation.services import model_register
from studies.lifecycle import study_preparation_check
from studies.models import Presentation, Study, StudyReader
from tests.generation.models import built
from tests.generation.test_generate import make_images, run_job
from tests.studies.study_fixtures import make_open_study, make_real_set

pytestmark = pytest.mark.django_db


@pytest.fixture
def ddpm():
    return model_register(name="tiny-ddpm", path=str(built("ddpm")), steps=2, batch_size=4)


def create_in_admin(client, image_set, model) -> Study:
    data = {
        "title": "Chest X-ray realism",
        "instructions": "Label each image.",
        "real_sets": [image_set.pk],
        "real_count": 4,
        "image_size": 512,
        "practice_count": 0,
        "repeat_percent": 0,
        "allow_unsure": "on",
        "ask_reasons": "never",
        "ask_region": "never",
        "display_check": "off",
        "arms-TOTAL_FORMS": 1,
        "arms-INITIAL_FORMS": 0,
        "arms-0-model": model.pk,
        "arms-0-count": 4,
    }
    response = client.post("/admin/studies/study/add/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    return Study.objects.get(title="Chest X-ray realism")


def test_a_researcher_takes_a_study_from_draft_to_closed(client, researcher, reader, ddpm):
    client.force_login(researcher)
    make_images(ddpm, count=2)
    study = create_in_admin(client, make_real_set(6), ddpm)
    page = client.get(f"/admin/studies/study/{study.pk}/change/")
    assert b"Prepare" in page.content and b'aria-current="step">Draft' in page.content

    client.post(f"/admin/studies/study/{study.pk}/prepare/")
    page = client.get(f"/admin/studies/study/{study.pk}/change/")
    assert b'http-equiv="refresh"' in page.content
    assert b"0 of 2" in page.content  # the job for the two missing images, with its progress bar
    run_job(study.arms.get().job)
    study_preparation_check(study=study)  # what a worker does when the job is done

    page = client.get(f"/admin/studies/study/{study.pk}/change/")
    study.refresh_from_db()
    assert study.status == Study.Status.READY
    assert b"Blinding audit" in page.content and b"Open anyway" in page.content  # noise vs phantoms
    # The image list is frozen from here: its fields are shown, not editable.
    assert b'name="real_count"' not in page.content

    client.post(f"/admin/studies/study/{study.pk}/readers/", {"existing": [reader.pk], "new": "dr_lee"})
    refused = client.post(f"/admin/studies/study/{study.pk}/open/", follow=True)
    assert b"The blinding audit found shortcuts" in refused.content
    client.post(f"/admin/studies/study/{study.pk}/open/", {"override_reason": "Pilot of the page"})
    study.refresh_from_db()
    assert study.status == Study.Status.OPEN and study.override_reason == "Pilot of the page"
    assert Presentation.objects.filter(study=study, reader=reader).count() == 8

    page = client.get(f"/admin/studies/study/{study.pk}/change/")
    assert b"Pilot of the page" in page.content and b"0 / 8" in page.content
    client.post(f"/admin/studies/study/{study.pk}/close/")
    study.refresh_from_db()
    assert study.status == Study.Status.CLOSED


def test_the_page_of_a_preparing_study_only_reads_even_when_its_images_are_all_there(
    client, researcher, ddpm
):
    client.force_login(researcher)
    study = create_in_admin(client, make_real_set(6), ddpm)
    client.post(f"/admin/studies/study/{study.pk}/prepare/")
    run_job(study.arms.get().job)
    for _ in range(2):  # the page refreshing itself
        page = client.get(f"/admin/studies/study/{study.pk}/change/")
        assert b'http-equiv="refresh"' in page.content and b"4 of 4" in page.content
    study.refresh_from_db()
    assert study.status == Study.Status.PREPARING and not study.images.exists()


def test_new_readers_get_their_links_once_on_the_readers_page(client, researcher):
    client.force_login(researcher)
    study = Study.objects.create(title="Realism")
    page = client.post(
        f"/admin/studies/study/{study.pk}/readers/", {"new": "dr_lee lee@example.org\ndr_khan"}
    )
    assert page.status_code == 200
    assert page.content.count(b"/accounts/reset/") == 2
    assert set(StudyReader.objects.filter(study=study).values_list("reader__username", flat=True)) == {
        "dr_lee",
        "dr_khan",
    }
    again = client.get(f"/admin/studies/study/{study.pk}/readers/")
    assert b"/accounts/reset/" not in again.content
    bad = client.post(f"/admin/studies/study/{study.pk}/readers/", {"new": "dr_lee"})
    assert b"line 1: &#x27;dr_lee&#x27; already has an account" in bad.content


def test_a_refused_step_says_why_on_the_page(client, researcher, ddpm):
    client.force_login(researcher)
    study = Study.objects.create(title="Empty")
    page = client.post(f"/admin/studies/study/{study.pk}/prepare/", follow=True)
    assert b"Cannot prepare: add at least one model" in page.content
    page = client.post(f"/admin/studies/study/{study.pk}/close/", follow=True)
    assert b"Only an open study can be closed" in page.content


@pytest.mark.parametrize("step", ["prepare", "back-to-draft", "open", "close", "audit", "readers", "link"])
def test_readers_cannot_reach_the_study_steps(client, reader, step):
    client.force_login(reader)
    study = Study.objects.create(title="Realism")
    response = client.post(f"/admin/studies/study/{study.pk}/{step}/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT


def test_presentations_are_read_only_in_the_admin(client, researcher, reader):
    client.force_login(researcher)
    study = make_open_study(reader, images=2)
    presentation = Presentation.objects.filter(study=study).first()
    assert client.get("/admin/studies/presentation/add/").status_code == 403
    page = client.get(f"/admin/studies/presentation/{presentation.pk}/change/")
    assert page.status_code == 200 and b'type="submit"' not in page.content.split(b'id="content-main"')[1]
    listing = client.get("/admin/studies/presentation/")
    assert b"Add presentation" not in listing.content
