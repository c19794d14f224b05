"""Preparation moves on by itself: the workers draw a study's images once its models have them."""

import pytest

from generation.services import model_register
from studies.lifecycle import study_prepare
from studies.models import Study, StudyModel
from tests.conftest import wait_until
from tests.generation.models import built
from tests.studies.study_fixtures import make_real_set

pytestmark = pytest.mark.services


def draft(image_set, model, title: str) -> Study:
    study = Study.objects.create(title=title, real_count=2)
    study.real_sets.add(image_set)
    StudyModel.objects.create(study=study, model=model, count=2)
    return study


def status_of(study: Study) -> str:
    return Study.objects.values_list("status", flat=True).get(pk=study.pk)


def test_the_worker_alone_brings_a_prepared_study_to_ready_whether_or_not_images_must_be_made(
    celery_workers,
):
    # No beat: only the end of the generation job can move the first study on.
    celery_workers.start()
    model = model_register(name="tiny-ddpm", path=str(built("ddpm")), steps=2, batch_size=4)
    image_set = make_real_set(4)

    needs_images = study_prepare(study=draft(image_set, model, "Needs images"))
    assert needs_images.arms.get().job is not None
    wait_until(lambda: status_of(needs_images) == Study.Status.READY, timeout=120, what="Ready")
    needs_images.refresh_from_db()
    assert needs_images.images.count() == 4 and needs_images.audit_report["rows"]

    has_images = study_prepare(study=draft(image_set, model, "Has its images"))
    assert has_images.arms.get().job is None  # nothing to generate: the draw is sent at once
    wait_until(lambda: status_of(has_images) == Study.Status.READY, timeout=60, what="Ready")
    assert has_images.images.count() == 4
