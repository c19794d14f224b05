"""Open studies with real and synthetic images, for reader-facing tests."""

import uuid

import numpy as np

from studies.images import image_build
from studies.imaging.decode import Decoded
from studies.imaging.phantoms import phantom
from studies.models import Image, ImageSet, Study, StudyImage, StudyModel
from studies.services import study_reader_add

MODEL_NAMES = ("cxr-diffusion", "cxr-latent")


def fixture_version(name: str):
    """A registered model's first settings version (no pipeline is loaded: pixels come from here)."""
    from generation.models import GenerativeModel, ModelVersion

    model, _ = GenerativeModel.objects.get_or_create(
        name=name, defaults={"path": f"/models/{name}", "pipeline_class": "DDPMPipeline", "native_size": 64}
    )
    version, _ = ModelVersion.objects.get_or_create(model=model, number=1)
    return version


def make_images(count: int, models=MODEL_NAMES, *, lifelike: bool = False) -> list[Image]:
    """Half real (phantom radiographs), half synthetic: stand-in pixels of the fixture models in turn.

    Synthetic pixels are noise, or phantoms too where `lifelike` (a model that passes the blinding audit).
    """
    from generation.models import GeneratedImage

    image_set, _ = ImageSet.objects.get_or_create(name="fixture set")
    images = []
    for index in range(count):
        if index % 2 == 0:
            pixels, origin, kind = phantom(index, 512), Image.Origin.REAL, "PNG"
        elif lifelike:
            pixels, origin, kind = phantom(index, 512), Image.Origin.SYNTHETIC, "generated"
        else:
            pixels = np.random.default_rng(index).random((64, 64), dtype=np.float32)
            origin, kind = Image.Origin.SYNTHETIC, "generated"
        decoded = Decoded(
            pixels=pixels, source_format=kind, width=pixels.shape[1], height=pixels.shape[0], bit_depth=16
        )
        image = image_build(
            decoded=decoded,
            origin=origin,
            source_sha256=uuid.uuid4().hex * 2,
            image_set=image_set if origin == Image.Origin.REAL else None,
        )
        image.save()
        if origin == Image.Origin.SYNTHETIC:
            version = fixture_version(models[(index // 2) % len(models)])
            GeneratedImage.objects.create(
                image=image, version=version, seed=image.pk, used_seed=image.pk, prompt="", seconds=0.1
            )
        images.append(image)
    return images


def make_real_set(count: int, name: str = "phantoms") -> ImageSet:
    """A set of real (phantom) radiographs, as an import would leave it."""
    image_set = ImageSet.objects.create(name=name)
    for index in range(count):
        pixels = phantom(index, 256)
        decoded = Decoded(pixels=pixels, source_format="PNG", width=256, height=256, bit_depth=16)
        image_build(
            decoded=decoded, origin=Image.Origin.REAL, source_sha256=uuid.uuid4().hex * 2, image_set=image_set
        ).save()
    return image_set


def make_open_study(
    reader,
    *,
    images: int = 6,
    ask_confidence: bool = False,
    allow_unsure: bool = True,
    readers=(),
    practice: int = 0,
    models=MODEL_NAMES,
    **options,
) -> Study:
    """An open study of `images` images (and `practice` practice images) for the readers given."""
    study = Study.objects.create(
        title="Chest X-ray realism",
        status=Study.Status.OPEN,
        ask_confidence=ask_confidence,
        allow_unsure=allow_unsure,
        instructions="Label each image **real** or **fake**.",
        **options,
    )
    pool = make_images(images + practice, models)
    StudyImage.objects.bulk_create(
        StudyImage(study=study, image=image, practice=index >= images) for index, image in enumerate(pool)
    )
    arms: dict = {}
    for image in pool[:images]:
        if image.origin == Image.Origin.SYNTHETIC:
            version = image.generated.version
            arms.setdefault(version, 0)
            arms[version] += 1
    for version, n in arms.items():
        StudyModel.objects.create(study=study, model=version.model, count=n, version=version)
    for person in (reader, *readers):
        study_reader_add(study=study, reader=person)
    return study
