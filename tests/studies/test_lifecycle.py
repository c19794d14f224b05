"""A study's life: prepare draws and generates, open checks and freezes, readers get sequences."""

import io

import pytest
from PIL import Image as PILImage

from generation.models import GenerationJob
from generation.services import model_register
from studies.lifecycle import (
    StudyRefused,
    preparation_error,
    study_back_to_draft,
    study_close,
    study_open,
    study_preparation_check,
    study_prepare,
)
from studies.models import Image, Presentation, Study, StudyImage, StudyModel
from studies.services import study_reader_add
from studies.tasks import preparation_advance
from tests.conftest import stored_names
from tests.generation.models import built
from tests.generation.test_generate import make_images, run_job
from tests.studies.study_fixtures import make_images as make_mixed_images
from tests.studies.study_fixtures import make_real_set

pytestmark = pytest.mark.django_db


@pytest.fixture
def ddpm():
    return model_register(name="tiny-ddpm", path=str(built("ddpm")), steps=2, batch_size=4)


def draft(image_set, model, *, real=4, synthetic=4, **options) -> Study:
    study = Study.objects.create(title="Realism", real_count=real, **options)
    study.real_sets.add(image_set)
    StudyModel.objects.create(study=study, model=model, count=synthetic)
    return study


def prepared(study: Study) -> Study:
    """Prepare, run the generation jobs here (as the workers would), and draw."""
    study_prepare(study=study)
    for arm in study.arms.all():
        if arm.job:
            run_job(arm.job)
    return study_preparation_check(study=study)


def test_prepare_generates_only_what_is_missing_then_draws_the_images(ddpm):
    make_images(ddpm, count=3)  # the model already has 3 images; the study needs 4 + 1 practice
    study = draft(make_real_set(6), ddpm, practice_count=2)
    study_prepare(study=study)
    study.refresh_from_db()
    assert study.status == Study.Status.PREPARING
    arm = study.arms.get()
    assert arm.job.count == 2 and arm.version == ddpm.current_version
    assert study_preparation_check(study=study).status == Study.Status.PREPARING  # the job has not run

    run_job(arm.job)
    study = study_preparation_check(study=study)
    assert study.status == Study.Status.READY
    rows = list(study.images.select_related("image"))
    study_rows = [r for r in rows if not r.practice]
    practice_rows = [r for r in rows if r.practice]
    assert sorted(r.image.origin for r in study_rows) == ["real"] * 4 + ["synthetic"] * 4
    assert sorted(r.image.origin for r in practice_rows) == ["real", "synthetic"]
    assert study.selection_seed is not None
    assert study.audit_report["rows"], "the audit runs as soon as the images are drawn"


def test_the_draw_is_rebuilt_exactly_from_its_recorded_seed(ddpm):
    make_images(ddpm, count=10)
    image_set = make_real_set(10)
    study = prepared(draft(image_set, ddpm))
    first = sorted(study.images.values_list("image_id", flat=True))
    seed = study.selection_seed
    study_back_to_draft(study=study)
    assert not study.images.exists()
    study_prepare(study=study)
    Study.objects.filter(pk=study.pk).update(selection_seed=seed)
    study = study_preparation_check(study=study)
    assert sorted(study.images.values_list("image_id", flat=True)) == first
    assert len(first) == 8


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"real_count": 0}, "add real radiographs"),
        ({"real_count": 50}, "but the chosen sets hold 6"),
        ({"no_model": True}, "add at least one model"),
        ({"no_sets": True}, "choose the image sets"),
    ],
)
def test_prepare_is_refused_with_the_reason(ddpm, change, reason):
    study = draft(make_real_set(6), ddpm)
    if change.pop("no_model", False):
        study.arms.all().delete()
    if change.pop("no_sets", False):
        study.real_sets.clear()
    Study.objects.filter(pk=study.pk).update(**change)
    with pytest.raises(StudyRefused, match=reason):
        study_prepare(study=study)
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT


def test_a_failed_generation_job_keeps_the_study_preparing(ddpm):
    study = draft(make_real_set(6), ddpm)
    study_prepare(study=study)
    GenerationJob.objects.filter(pk=study.arms.get().job_id).update(status="failed", error="CUDA exploded")
    from studies.lifecycle import preparation_error

    assert study_preparation_check(study=study).status == Study.Status.PREPARING
    assert "CUDA exploded" in preparation_error(study)


def test_opening_is_refused_when_the_audit_warns_unless_a_reason_is_recorded(ddpm, researcher, reader):
    # The tiny DDPM's random weights make noise, which any trait tells from a radiograph.
    make_images(ddpm, count=6)
    study = prepared(draft(make_real_set(6), ddpm, real=6, synthetic=6))
    study_reader_add(study=study, reader=reader)
    assert not study.audit_report["passed"]
    with pytest.raises(StudyRefused, match="blinding audit"):
        study_open(study=study, user=researcher)
    assert not Presentation.objects.filter(study=study).exists()

    study = study_open(study=study, user=researcher, override_reason="Pilot: checking the page only")
    assert study.status == Study.Status.OPEN
    assert study.override_reason == "Pilot: checking the page only"
    assert study.opened_by == researcher
    assert Presentation.objects.filter(study=study, reader=reader).count() == 12


def ready_study_of(images: list[Image], **options) -> Study:
    study = Study.objects.create(title="Ready", status=Study.Status.READY, **options)
    StudyImage.objects.bulk_create(StudyImage(study=study, image=image) for image in images)
    return study


def test_a_study_whose_images_pass_the_audit_opens_without_a_reason(researcher):
    # Phantoms on both sides: nothing but chance separates the two groups.
    real_set = make_real_set(16)
    images = list(real_set.images.all())
    Image.objects.filter(pk__in=[i.pk for i in images[::2]]).update(
        origin=Image.Origin.SYNTHETIC, image_set=None
    )
    study = study_open(study=ready_study_of(images), user=researcher)
    assert study.audit_report["passed"], study.audit_report["problems"]
    assert study.status == Study.Status.OPEN and study.override_reason == ""


def test_opening_is_refused_when_an_image_file_is_missing(researcher):
    images = make_mixed_images(4)
    images[0].file.delete(save=False)
    with pytest.raises(StudyRefused, match="1 of the study's image files are missing"):
        study_open(study=ready_study_of(images), user=researcher, override_reason="x")


def test_each_step_is_taken_only_from_its_state(ddpm, researcher):
    study = draft(make_real_set(6), ddpm)
    with pytest.raises(StudyRefused, match="Only a ready study can be opened"):
        study_open(study=study, user=researcher)
    with pytest.raises(StudyRefused, match="Only an open study can be closed"):
        study_close(study=study)
    open_study = ready_study_of(make_mixed_images(4))
    study_open(study=open_study, user=researcher, override_reason="test")
    with pytest.raises(StudyRefused, match="Only a draft can be prepared"):
        study_prepare(study=open_study)
    with pytest.raises(StudyRefused, match="goes back to draft"):
        study_back_to_draft(study=open_study)
    assert study_close(study=open_study).status == Study.Status.CLOSED


def test_a_reader_added_to_an_open_study_gets_a_sequence_at_once(researcher, reader, outsider):
    study = ready_study_of(make_mixed_images(6))
    study_reader_add(study=study, reader=reader)
    study_open(study=study, user=researcher, override_reason="test")
    study_reader_add(study=study, reader=outsider)
    for person in (reader, outsider):
        assert Presentation.objects.filter(study=study, reader=person).count() == 6
    study_reader_add(study=study, reader=outsider)  # twice: nothing more
    assert Presentation.objects.filter(study=study, reader=outsider).count() == 6


def test_readers_get_practice_first_and_repeats_far_from_their_first_showing(researcher, reader):
    images = make_mixed_images(24)
    study = ready_study_of(images[:20], repeat_percent=10)
    StudyImage.objects.bulk_create(
        StudyImage(study=study, image=image, practice=True) for image in images[20:]
    )
    study_reader_add(study=study, reader=reader)
    study_open(study=study, user=researcher, override_reason="test")
    sequence = list(Presentation.objects.filter(study=study, reader=reader).order_by("position"))
    assert len(sequence) == 4 + 20 + 2
    assert all(p.is_practice for p in sequence[:4]) and not any(p.is_practice for p in sequence[4:])
    repeats = [p for p in sequence if p.is_repeat]
    assert len(repeats) == 2
    for again in repeats:
        first = next(p for p in sequence if p.image_id == again.image_id and not p.is_repeat)
        assert again.position - first.position >= 10


def test_a_study_size_other_than_the_stored_one_resizes_every_image_the_same_way(
    ddpm, researcher, reader, client
):
    make_images(ddpm, count=2)
    study = prepared(draft(make_real_set(2), ddpm, real=2, synthetic=2, image_size=256))
    rows = list(study.images.select_related("image"))
    assert all(row.file and row.image.size == 512 for row in rows)
    study_reader_add(study=study, reader=reader)
    study_open(study=study, user=researcher, override_reason="noise model")
    client.force_login(reader)
    for presentation in Presentation.objects.filter(study=study, reader=reader):
        response = client.get(f"/p/{presentation.pk}/image")
        assert PILImage.open(io.BytesIO(response.content)).size == (256, 256)


def test_a_draw_that_fails_on_the_worker_says_why_on_the_study_and_leaves_no_files(ddpm, media_root):
    make_images(ddpm, count=4)
    image_set = make_real_set(4)
    study = draft(image_set, ddpm, image_size=384)  # another size: every drawn image is resized
    study_prepare(study=study)
    lost = image_set.images.order_by("pk").last()
    lost.file.storage.delete(lost.file.name)
    before = stored_names()
    assert before

    preparation_advance(study.pk)  # what the worker runs

    study.refresh_from_db()
    assert study.status == Study.Status.PREPARING and not study.images.exists()
    assert study.preparation_error.startswith("Drawing the images failed on a worker:")
    assert preparation_error(study) == study.preparation_error
    assert stored_names() == before  # the resized copies went too
    study_back_to_draft(study=study)
    study.refresh_from_db()
    assert study.preparation_error == ""
