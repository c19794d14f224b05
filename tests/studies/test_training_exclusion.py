"""Never train on what readers will be shown as real: a study's real draw leaves out training images.

The rule reads training records, so the jobs here are rows with a record, as a
finished training job leaves them; the training itself is tested in tests/generation.
"""

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from playwright.sync_api import expect

from generation.models import GeneratedImage, GenerativeModel, TrainingJob
from studies.images import image_build
from studies.imaging.decode import Decoded
from studies.imaging.phantoms import phantom
from studies.lifecycle import (
    StudyRefused,
    preparation_error,
    study_audit,
    study_open,
    study_preparation_check,
    study_prepare,
)
from studies.models import Image, ImageSet, Study, StudyModel
from studies.selectors import study_training_images
from tests.studies.study_fixtures import fixture_version

pytestmark = pytest.mark.django_db


def radiographs(name: str, count: int, *, first: int = 0) -> ImageSet:
    """A set of real phantom radiographs; phantoms from `first` on (the same number: the same pixels)."""
    image_set = ImageSet.objects.create(name=name)
    for seed in range(first, first + count):
        pixels = phantom(seed, 256)
        decoded = Decoded(pixels=pixels, source_format="PNG", width=256, height=256, bit_depth=16)
        image_build(
            decoded=decoded, origin=Image.Origin.REAL, source_sha256=uuid.uuid4().hex * 2, image_set=image_set
        ).save()
    return image_set


def arm_model(name: str, count: int = 8) -> GenerativeModel:
    """A registered model holding `count` synthetic images (phantom pixels far from the real sets')."""
    version = fixture_version(name)
    for image in radiographs(f"pixels of {name}", count, first=10_000).images.all():
        image.origin, image.image_set = Image.Origin.SYNTHETIC, None
        image.save(update_fields=["origin", "image_set"])
        GeneratedImage.objects.create(
            image=image, version=version, seed=image.pk, used_seed=image.pk, prompt="", seconds=0.1
        )
    return version.model


def trained(model: GenerativeModel, images, *, base: GenerativeModel | None = None) -> TrainingJob:
    """A finished training job that registered `model`, with the record a worker writes."""
    listing = [{"id": i.pk, "png_sha256": i.png_sha256, "source_sha256": i.source_sha256} for i in images]
    return TrainingJob.objects.create(
        name=model.name,
        method=TrainingJob.Method.LORA if base else TrainingJob.Method.UNCONDITIONAL,
        base=base,
        steps=2,
        batch_size=1,
        learning_rate=1e-4,
        resolution=32,
        status=TrainingJob.Status.DONE,
        model=model,
        record={"base": base.name if base else None, "images": listing},
    )


def design(title: str, image_sets, model: GenerativeModel, *, real=3, practice=2) -> Study:
    """A draft: `real` scored real images, and (practice + 1) // 2 real practice images."""
    study = Study.objects.create(title=title, real_count=real, practice_count=practice)
    study.real_sets.add(*image_sets)
    StudyModel.objects.create(study=study, model=model, count=3)
    return study


def prepare(study: Study) -> Study:
    study_prepare(study=study)
    study = study_preparation_check(study=study)  # what a worker does next
    assert study.status == Study.Status.READY, preparation_error(study)
    return study


def real_drawn(study: Study) -> set[int]:
    return set(study.images.filter(image__origin=Image.Origin.REAL).values_list("image_id", flat=True))


def test_prepare_draws_no_real_image_that_a_model_under_study_was_trained_on():
    real_set, model = radiographs("PACS export", 10), arm_model("cxr-lora")
    learnt = list(real_set.images.all()[:6])
    trained(model, learnt)
    study = prepare(design("Realism", [real_set], model))
    # 3 scored and 1 practice real image: exactly the 4 that trained nothing.
    assert real_drawn(study) == set(real_set.images.values_list("pk", flat=True)) - {i.pk for i in learnt}


def test_the_same_radiograph_in_another_set_is_left_out_by_its_source_and_by_its_pixels():
    first = radiographs("first import", 6)
    trained(model := arm_model("cxr-lora"), first.images.all())
    # The same files imported again at another size: new rows and reader PNGs, the same sources.
    again = ImageSet.objects.create(name="imported again")
    for image in first.images.all():
        image.pk, image.image_set, image.png_sha256 = None, again, uuid.uuid4().hex * 2
        image.save()
    # The same pictures exported again: other source files, the same reader PNGs.
    exported = radiographs("exported again", 6)
    others = radiographs("other patients", 4, first=100)
    study = prepare(design("Realism", [again, exported, others], model))
    assert real_drawn(study) == set(others.images.values_list("pk", flat=True))


def test_prepare_is_refused_with_numbers_when_the_training_images_leave_too_few():
    real_set, model = radiographs("PACS export", 10), arm_model("cxr-lora")
    trained(model, real_set.images.all()[:8])
    study = design("Realism", [real_set], model)
    with pytest.raises(StudyRefused) as refused:
        study_prepare(study=study)
    assert str(refused.value) == (
        "Cannot prepare: 4 real radiographs are wanted (3 for the study, 1 for practice) but the chosen "
        "sets hold 10, of which 8 trained a model under study (8 trained ‘cxr-lora’) and are never shown "
        "as real; 2 remain."
    )
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT and not study.images.exists()


def test_the_refusal_counts_other_studies_draws_among_the_images_that_remain():
    real_set, model = radiographs("PACS export", 10), arm_model("cxr-lora", 16)
    prepare(design("First", [real_set], model, real=2, practice=0))  # scores 2 of the 10
    trained(model, real_set.images.exclude(pk__in=real_drawn(Study.objects.get(title="First")))[:5])
    study = design("Second", [real_set], model, real=5, practice=2)
    with pytest.raises(StudyRefused) as refused:
        study_prepare(study=study)
    assert (
        "the chosen sets hold 10, of which 5 trained a model under study (5 trained ‘cxr-lora’) and are "
        "never shown as real; of the 5 that remain, 0 are practice in other studies (never scored here) "
        "and 2 are scored in other studies (never practice here)."
    ) in str(refused.value)


def test_a_fine_tuned_model_inherits_what_its_bases_were_trained_on():
    real_set = radiographs("PACS export", 10)
    images = list(real_set.images.all())
    foundation, base, lora = arm_model("cxr-foundation", 0), arm_model("cxr-base", 0), arm_model("cxr-lora")
    trained(foundation, images[:2])
    trained(base, images[2:4], base=foundation)
    trained(lora, images[4:6], base=base)
    study = design("Realism", [real_set], lora)
    assert [(each.model, each.trained, len(each.ids)) for each in study_training_images(study)] == [
        ("cxr-lora", "cxr-lora", 2),
        ("cxr-lora", "cxr-base", 2),
        ("cxr-lora", "cxr-foundation", 2),
    ]
    study = prepare(study)
    assert real_drawn(study) == {image.pk for image in images[6:]}
    # The base alone, under study, answers for its own and its base's images only.
    alone = design("Base alone", [real_set], base, real=2, practice=0)
    assert {len(each.ids) for each in study_training_images(alone)} == {2}
    assert {each.trained for each in study_training_images(alone)} == {"cxr-base", "cxr-foundation"}


def test_the_refusal_names_the_base_the_images_were_learnt_through():
    real_set = radiographs("PACS export", 8)
    images = list(real_set.images.all())
    base, lora = arm_model("cxr-base", 0), arm_model("cxr-lora")
    trained(base, images[:5])
    trained(lora, images[4:6], base=base)
    with pytest.raises(StudyRefused) as refused:
        study_prepare(study=design("Realism", [real_set], lora))
    assert (
        "the chosen sets hold 8, of which 6 trained a model under study (2 trained ‘cxr-lora’; "
        "5 trained ‘cxr-lora’ (fine-tuned from ‘cxr-base’)) and are never shown as real; 2 remain."
    ) in str(refused.value)


def test_unfinished_training_jobs_do_not_count():
    real_set, model = radiographs("PACS export", 4), arm_model("cxr-lora")
    job = trained(model, real_set.images.all())
    for status in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED, TrainingJob.Status.RUNNING):
        TrainingJob.objects.filter(pk=job.pk).update(status=status)
        assert study_training_images(design(f"Realism {status}", [real_set], model)) == []
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.DONE)
    assert len(study_training_images(design("Realism done", [real_set], model))[0].ids) == 4


def test_the_audit_lists_real_images_a_model_was_trained_on_after_the_study_was_prepared(researcher):
    real_set, model = radiographs("PACS export", 6), arm_model("cxr-lora")
    study = prepare(design("Realism", [real_set], model))
    assert study.audit_report["trained_on"] == []
    scored = study.images.filter(image__origin=Image.Origin.REAL, practice=False).first().image
    practice = study.images.get(image__origin=Image.Origin.REAL, practice=True).image
    trained(model, [scored, practice])
    report = study_audit(study).as_dict()
    assert not report["passed"]
    assert [(row["image"], row["practice"], row["model"]) for row in report["trained_on"]] == sorted(
        [(scored.pk, False, "cxr-lora"), (practice.pk, True, "cxr-lora")]
    )
    first, second = sorted([scored.pk, practice.pk])
    assert f"2 real images of “Realism” trained ‘cxr-lora’ (images {first}, {second})" in "".join(
        report["problems"]
    )
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("audit_blinding", str(study.pk), stdout=out)
    assert f"trained ‘cxr-lora’ (images {first}, {second})" in out.getvalue()
    # Opening runs the audit again: refused without a recorded reason.
    with pytest.raises(StudyRefused, match="trained ‘cxr-lora’"):
        study_open(study=study, user=researcher)
    study.refresh_from_db()
    assert study.status == Study.Status.READY


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_study_page_shows_the_overlap_after_preparation_and_the_refusal_on_prepare(tabs, researcher):
    real_set, model = radiographs("PACS export", 8), arm_model("cxr-lora")
    study = design("Realism", [real_set], model)
    tab = tabs()
    page = tab.page
    page.goto(f"{tab.base_url}/admin/login/?next=/admin/studies/study/{study.pk}/change/")
    page.get_by_label("Username").fill("researcher")
    page.get_by_label("Password").fill("researcher-pass")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Prepare").click()
    expect(page.get_by_text("Preparing: missing images are being generated.")).to_be_visible()
    study_preparation_check(study=study)  # what a worker does next
    page.reload()
    current = page.get_by_role("list", name="Life of the study").locator("[aria-current=step]")
    expect(current).to_have_text("Ready")

    # The model's training record arrives after the draw: it learnt from the 4 real images drawn, and 2 more.
    drawn = real_drawn(study)
    trained(model, [*Image.objects.filter(pk__in=drawn), *real_set.images.exclude(pk__in=drawn)[:2]])
    page.get_by_role("button", name="Run the audit again").click()
    expect(page.get_by_text("4 real images of “Realism” trained ‘cxr-lora’ (images")).to_be_visible()
    listed = page.get_by_role("table", name="Real images that a model under study was trained on")
    expect(listed.locator("tbody tr")).to_have_count(4)
    shown = {int(text) for text in listed.locator("tbody td:nth-child(1)").all_inner_texts()}
    assert shown == drawn
    assert set(listed.locator("tbody td:nth-child(3)").all_inner_texts()) == {"cxr-lora"}
    study.refresh_from_db()
    assert {row["image"] for row in study.audit_report["trained_on"]} == drawn

    # A new draw leaves them out: 2 remain of the 8, and the study needs 4.
    page.get_by_role("button", name="Back to draft").click()
    expect(current).to_have_text("Draft")
    page.get_by_role("button", name="Prepare").click()
    expect(
        page.get_by_text(
            "Cannot prepare: 4 real radiographs are wanted (3 for the study, 1 for practice) but the chosen "
            "sets hold 8, of which 6 trained a model under study (6 trained ‘cxr-lora’) and are never shown "
            "as real; 2 remain."
        )
    ).to_be_visible()
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT and not study.images.exists()
