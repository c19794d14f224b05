"""Blinding across studies: no reader is told the truth of an image they score, in any study."""

import pytest

from generation.models import GeneratedImage
from studies.lifecycle import (
    StudyRefused,
    preparation_error,
    sequence_build,
    study_audit,
    study_open,
    study_preparation_check,
    study_prepare,
)
from studies.models import Image, ImageSet, Presentation, Study, StudyImage, StudyModel, StudyReader
from studies.services import study_reader_add, study_reader_remove
from tests.studies.study_fixtures import fixture_version, make_real_set

pytestmark = pytest.mark.django_db


def model_images(name: str, count: int):
    """A fixture model's version holding `count` images (phantom pixels: cheap, and audit-friendly)."""
    version = fixture_version(name)
    made = make_real_set(count, name=f"pixels of {name}")
    for image in made.images.all():
        image.origin, image.image_set = Image.Origin.SYNTHETIC, None
        image.save(update_fields=["origin", "image_set"])
        GeneratedImage.objects.create(
            image=image, version=version, seed=image.pk, used_seed=image.pk, prompt="", seconds=0.1
        )
    return version


def copied_set(image_set: ImageSet, name: str) -> ImageSet:
    """The same files imported into a second set: new rows, the same source hashes."""
    copy = ImageSet.objects.create(name=name)
    for image in image_set.images.all():
        image.pk, image.image_set = None, copy
        image.save()
    return copy


def prepared(title: str, image_sets, version, *, real=4, synthetic=4, practice=4) -> Study:
    study = Study.objects.create(title=title, real_count=real, practice_count=practice)
    study.real_sets.add(*image_sets)
    StudyModel.objects.create(study=study, model=version.model, count=synthetic)
    study_prepare(study=study)
    study = study_preparation_check(study=study)
    assert study.status == Study.Status.READY, preparation_error(study)
    return study


def sources(study: Study, *, practice: bool) -> set[str]:
    return set(study.images.filter(practice=practice).values_list("image__source_sha256", flat=True))


def study_of(title: str, *, scored=(), practice=(), status=Study.Status.READY) -> Study:
    """A study holding these images, as one drawn before blinding across studies could have left it."""
    study = Study.objects.create(title=title, status=status)
    StudyImage.objects.bulk_create(
        [StudyImage(study=study, image=image) for image in scored]
        + [StudyImage(study=study, image=image, practice=True) for image in practice]
    )
    return study


def test_studies_drawing_from_the_same_images_never_practise_on_each_others_scored_images():
    # Six real and six synthetic images for four studies of 4 + 2 each: a draw that ignored
    # the others would mix practice and scored images between them almost surely.
    real_set, version = make_real_set(6), model_images("cxr-diffusion", 6)
    studies = [prepared(f"Study {n}", [real_set], version) for n in range(4)]
    for study in studies:
        assert study.images.filter(practice=False).count() == 8
        assert study.images.filter(practice=True).count() == 4
        for other in studies:
            if other != study:
                assert not sources(study, practice=True) & sources(other, practice=False)


def test_the_same_file_in_another_set_is_the_same_image_to_the_draw():
    real_set, version = make_real_set(6), model_images("cxr-diffusion", 12)
    first = prepared("First", [real_set], version)
    again = copied_set(real_set, "the same export, imported again")
    second = prepared("Second", [again], version)
    assert set(second.images.values_list("image__image_set", flat=True)) >= {again.pk}
    assert not sources(second, practice=True) & sources(first, practice=False)
    assert not sources(second, practice=False) & sources(first, practice=True)
    # Both sets in one study: each source at most once, never both practice and scored.
    both = prepared("Both sets", [real_set, again], version, real=4, practice=4)
    drawn = list(both.images.values_list("image__source_sha256", flat=True))
    assert len(drawn) == len(set(drawn)) == 12


def test_prepare_is_refused_when_other_studies_leave_too_few_real_images_to_score():
    real_set, version = make_real_set(6), model_images("cxr-diffusion", 12)
    prepared("First", [real_set], version)  # its 4 scored and 2 practice radiographs use the set
    study = Study.objects.create(title="Second", real_count=5, practice_count=2)
    study.real_sets.add(real_set)
    StudyModel.objects.create(study=study, model=version.model, count=4)
    with pytest.raises(StudyRefused, match="2 are practice in other studies"):
        study_prepare(study=study)


def test_a_study_whose_images_another_study_drew_meanwhile_stays_preparing_and_says_why():
    real_set, version = make_real_set(6), model_images("cxr-diffusion", 12)
    late = Study.objects.create(title="Late", real_count=5, practice_count=2)
    late.real_sets.add(real_set)
    StudyModel.objects.create(study=late, model=version.model, count=4)
    study_prepare(study=late)
    prepared("Quick", [real_set], version)
    assert study_preparation_check(study=late).status == Study.Status.PREPARING
    assert not late.images.exists()
    assert "Another study drew some of the same images meanwhile" in preparation_error(late)
    assert "back to draft" in preparation_error(late)


def test_a_reader_is_refused_from_a_study_scoring_images_they_practised_on_elsewhere(reader, outsider):
    shared, other = make_real_set(2, name="shared"), make_real_set(4, name="other")
    x, y = shared.images.all()
    practice = study_of("Practice first", practice=[x, y], scored=other.images.all()[:2], status="open")
    study_reader_add(study=practice, reader=reader)
    scoring = study_of("Scored later", scored=[x, *other.images.all()[2:]])
    with pytest.raises(StudyRefused) as refused:
        study_reader_add(study=scoring, reader=reader)
    message = str(refused.value)
    assert "reader cannot read in “Scored later”" in message
    assert "1 image scored in “Scored later” is practice in “Practice first”" in message
    assert "send “Scored later” back to draft and prepare it again" in message
    assert not StudyReader.objects.filter(study=scoring, reader=reader).exists()
    study_reader_add(study=scoring, reader=outsider)  # in no other study: nothing to learn


def test_a_reader_scoring_an_image_is_refused_from_a_study_that_practises_on_it(researcher, reader):
    shared, other = make_real_set(1, name="shared"), make_real_set(4, name="other")
    x = shared.images.get()
    scoring = study_of("Scored first", scored=[x, *other.images.all()[:2]])
    study_reader_add(study=scoring, reader=reader)
    study_open(study=scoring, user=researcher, override_reason="phantoms only")
    # Readers added to an open study later are held to the same rule.
    practising = study_of("Practice later", practice=[x], scored=other.images.all()[2:], status="open")
    refusal = "1 image scored in “Scored first” is practice in “Practice later”"
    with pytest.raises(StudyRefused, match=refusal):
        study_reader_add(study=practising, reader=reader)
    assert not Presentation.objects.filter(study=practising).exists()


def test_the_same_file_in_another_set_counts_for_readers_too(reader):
    shared = make_real_set(2, name="shared")
    again = copied_set(shared, "imported twice")
    practice = study_of("Practice", practice=shared.images.all(), status="closed")
    study_reader_add(study=practice, reader=reader)
    scoring = study_of("Scoring", scored=again.images.all())
    with pytest.raises(StudyRefused, match="2 images scored in “Scoring” are practice in “Practice”"):
        study_reader_add(study=scoring, reader=reader)


def overlapping(reader, outsider) -> Study:
    """A ready study scoring an image that `reader` practises on in an open study; `outsider` reads it too."""
    shared, other = make_real_set(1, name="shared"), make_real_set(4, name="other")
    x = shared.images.get()
    scoring = study_of("Scoring", scored=[*other.images.all()])
    practice = study_of("Practice", practice=[x], scored=other.images.all()[:2], status="open")
    for study in (scoring, practice):
        study_reader_add(study=study, reader=reader)
    study_reader_add(study=scoring, reader=outsider)
    StudyImage.objects.create(study=scoring, image=x)  # drawn while the other study was drawing
    return scoring


def test_opening_is_refused_while_a_reader_would_be_told_the_truth_elsewhere(researcher, reader, outsider):
    scoring = overlapping(reader, outsider)
    with pytest.raises(StudyRefused) as refused:
        study_open(study=scoring, user=researcher, override_reason="an audit reason does not cover this")
    assert str(refused.value).startswith("Cannot open: reader cannot read in “Scoring”: 1 image scored")
    assert "outsider" not in str(refused.value)
    scoring.refresh_from_db()
    assert scoring.status == Study.Status.READY
    assert not Presentation.objects.filter(study=scoring).exists()


def test_the_audit_reports_the_studys_images_that_are_practice_in_other_studies():
    shared, other = make_real_set(3, name="shared"), make_real_set(4, name="other")
    x, y, z = shared.images.all()
    scoring = study_of("Scoring", scored=[x, y, *other.images.all()[:2]], practice=[z])
    practice = study_of("Practice", practice=[x, y], status="closed")
    later = study_of("Later", scored=[z, *other.images.all()[2:]])
    report = study_audit(scoring).as_dict()
    assert not report["passed"]
    assert [(o["practice_study"], o["scored_study"], o["images"]) for o in report["overlaps"]] == [
        (practice.pk, scoring.pk, 2),
        (scoring.pk, later.pk, 1),
    ]
    assert any("2 images scored in “Scoring” are practice in “Practice”" in p for p in report["problems"])
    assert any("1 image scored in “Later” is practice in “Scoring”" in p for p in report["problems"])


def test_the_add_readers_page_explains_a_refusal_and_adds_the_other_readers(
    client, researcher, reader, outsider
):
    shared, other = make_real_set(1, name="shared"), make_real_set(2, name="other")
    x = shared.images.get()
    practice = study_of("Practice", practice=[x], status="open")
    study_reader_add(study=practice, reader=reader)
    scoring = study_of("Scoring", scored=[x, *other.images.all()])
    client.force_login(researcher)
    response = client.post(
        f"/admin/studies/study/{scoring.pk}/readers/",
        {"existing": [reader.pk, outsider.pk], "new": "dr_lee"},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    # The admin capitalises messages: "Reader" is the username "reader".
    assert "Reader cannot read in “Scoring”: 1 image scored in “Scoring” is practice in “Practice”" in page
    assert "2 readers added." in page
    added = set(StudyReader.objects.filter(study=scoring).values_list("reader__username", flat=True))
    assert added == {"outsider", "dr_lee"}


def test_a_practice_answer_hides_the_truth_of_an_image_the_reader_scores_elsewhere(client, reader):
    # Both studies opened before the rule, the reader in both: the answer is the last line.
    shared, other = make_real_set(2, name="shared"), make_real_set(2, name="other")
    x, y = shared.images.all()
    practice = study_of("Practice", practice=[x, y], scored=other.images.all(), status="open")
    scoring = study_of("Scoring", scored=[x, *other.images.all()], status="open")
    for study in (practice, scoring):
        sequence_build(place=StudyReader.objects.create(study=study, reader=reader, seed=1, number=1))
    client.force_login(reader)
    for image, shown in ((x, False), (y, True)):
        presentation = Presentation.objects.get(study=practice, reader=reader, image=image)
        body = client.post(f"/p/{presentation.pk}/answer", {"label": "real", "viewing_ms": 900}).json()
        assert ("feedback" in body) is shown, body
    assert Presentation.objects.get(study=practice, reader=reader, image=x).answer.label == "real"


def test_removing_the_reader_lets_the_study_open_and_bringing_them_back_is_refused(
    researcher, reader, outsider
):
    scoring = overlapping(reader, outsider)
    # The refusal's remedy: take the reader out of this study; then it opens, without them.
    study_reader_remove(study=scoring, reader=reader)
    study_open(study=scoring, user=researcher, override_reason="phantoms only")
    assert Presentation.objects.filter(study=scoring, reader=outsider).exists()
    assert not Presentation.objects.filter(study=scoring, reader=reader).exists()
    # Coming back is checked like a first arrival.
    with pytest.raises(StudyRefused, match="reader cannot read in “Scoring”"):
        study_reader_add(study=scoring, reader=reader)
    assert StudyReader.objects.get(study=scoring, reader=reader).removed is not None
    assert not Presentation.objects.filter(study=scoring, reader=reader).exists()
