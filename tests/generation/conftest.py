"""Fixtures of the generation tests: a model trained in the app with copies among its images
(random weights for the machine measures' extractors: `weights`, in tests/conftest.py)."""

import pytest

from config.celery import app as celery_app
from generation.models import GeneratedImage, TrainingJob
from studies.imaging.phantoms import phantom
from studies.models import Image, ImageSet
from tests.generation.measure_fixtures import copied, stored
from tests.studies.study_fixtures import fixture_version


@pytest.fixture
def empty_queues():
    """No task waits in any queue, before and after the test (the sweep reads the gpu queue)."""
    celery_app.control.purge()
    yield
    celery_app.control.purge()


@pytest.fixture
def trained_version():
    """A model trained in the app on 6 phantoms; of its 4 images, 2 are copies of training images."""
    training_set = ImageSet.objects.create(name="training phantoms")
    originals = [phantom(seed, 256) for seed in range(6)]
    training = [stored(p, origin=Image.Origin.REAL, image_set=training_set) for p in originals]
    version = fixture_version("cxr-trained")
    job = TrainingJob.objects.create(
        name="cxr-trained", steps=10, batch_size=2, learning_rate=1e-4, resolution=32, status="done",
        model=version.model,
    )  # fmt: skip
    job.image_sets.set([training_set])
    made = [copied(originals[2], 1), phantom(200, 256), copied(originals[4], 2), phantom(201, 256)]
    for seed, pixels in enumerate(made):
        image = stored(pixels, origin=Image.Origin.SYNTHETIC)
        GeneratedImage.objects.create(image=image, version=version, seed=seed, used_seed=seed, seconds=0.1)
    return version, training
