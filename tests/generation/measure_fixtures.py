"""Images for the machine measures' tests: planted copies, stored images, a study with copies."""

import io
import uuid

import numpy as np
from PIL import Image as PILImage

from generation.models import GeneratedImage
from studies.images import image_build
from studies.imaging.decode import Decoded
from studies.models import Image, Study, StudyImage, StudyModel
from tests.studies.study_fixtures import fixture_version, make_real_set


def copied(pixels, seed):
    """A training image resized, re-encoded as an 8-bit PNG and lightly noised."""
    small = PILImage.fromarray((pixels * 255).astype(np.uint8)).resize((200, 200), PILImage.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "PNG")
    again = np.asarray(PILImage.open(buffer), dtype=np.float32) / 255
    return np.clip(again + np.random.default_rng(seed).normal(0, 0.02, again.shape), 0, 1)


def stored(pixels, *, origin, image_set=None):
    """An image as an import or a generation job stores it."""
    decoded = Decoded(
        pixels=pixels, source_format="PNG", width=pixels.shape[1], height=pixels.shape[0], bit_depth=16
    )
    image = image_build(
        decoded=decoded, origin=origin, source_sha256=uuid.uuid4().hex * 2, image_set=image_set
    )
    image.save()
    return image


def study_with_copies(trained_version, *, status="ready"):
    """A prepared study: 6 real phantoms, the trained model's 4 images (2 copies of its training
    images, which are the same phantoms as the study's real ones) and 3 noise images of another model."""
    version, _ = trained_version
    other = fixture_version("cxr-other")
    made = []
    for seed in range(3):
        noise = np.random.default_rng(seed).random((256, 256), dtype=np.float32)
        image = stored(noise, origin=Image.Origin.SYNTHETIC)
        GeneratedImage.objects.create(image=image, version=other, seed=seed, used_seed=seed, seconds=0.1)
        made.append(image)
    real = list(Image.objects.filter(image_set=make_real_set(6, name="study phantoms")).order_by("pk"))
    practice = Image.objects.filter(image_set=make_real_set(1, name="practice")).get()
    study = Study.objects.create(title="Two arms", status=status)
    synthetic = list(Image.objects.filter(generated__version=version).order_by("generated__seed"))
    StudyImage.objects.bulk_create(
        [StudyImage(study=study, image=image) for image in real + synthetic + made]
        + [StudyImage(study=study, image=practice, practice=True)]
    )
    StudyModel.objects.create(study=study, model=version.model, version=version, count=4)
    StudyModel.objects.create(study=study, model=other.model, version=other, count=3)
    return study, real, synthetic
