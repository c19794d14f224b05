"""Readers get images only through their own presentations, with identical headers."""

import functools
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from django.conf import settings as django_settings

from studies.images import image_build
from studies.imaging.decode import Decoded, decode
from studies.imaging.normalise import png_chunk_types
from studies.imaging.phantoms import phantom
from studies.models import Image, ImageSet, Presentation, Study, StudyReader
from tests.studies.files import png16

pytestmark = pytest.mark.django_db


@functools.cache
def portrait_png() -> bytes:
    """A 2500-pixel portrait 16-bit PNG: drawn and encoded once (a second), decoded by each test."""
    return png16(phantom(1, 2500)[:, 300:2200])


@pytest.fixture
def study(reader, tmp_path):
    """An open study showing the reader one real and one synthetic image, as unlike as
    their sources get: a 2500-pixel portrait 16-bit PNG, and a model's 32-pixel floats."""
    image_set = ImageSet.objects.create(name="real")
    real = image_build(
        decoded=decode(portrait_png()),
        origin=Image.Origin.REAL,
        image_set=image_set,
        source_sha256="a" * 64,
        source_name="patient_0042.dcm",
    )
    real.save()
    pixels = np.random.default_rng(2).random((32, 32), dtype=np.float32)  # a tiny model's output
    generated = Decoded(pixels=pixels, source_format="generated", width=32, height=32, bit_depth=32)
    synthetic = image_build(decoded=generated, origin=Image.Origin.SYNTHETIC, source_sha256="b" * 64)
    synthetic.save()
    study = Study.objects.create(title="Open study", status=Study.Status.OPEN)
    StudyReader.objects.create(study=study, reader=reader, seed=0, number=1)  # only members see images
    for position, image in enumerate([real, synthetic]):
        Presentation.objects.create(study=study, reader=reader, image=image, position=position)
    return study


def image_url(presentation):
    return f"/p/{presentation.pk}/image"


def test_real_and_synthetic_images_are_served_with_identical_headers(client, reader, study):
    client.force_login(reader)
    responses = [client.get(image_url(p)) for p in study.presentations.all()]
    assert [r.status_code for r in responses] == [200, 200]
    headers = [{k: v for k, v in r.headers.items() if k != "Content-Length"} for r in responses]
    assert headers[0] == headers[1]
    assert headers[0]["Content-Type"] == "image/png"
    assert headers[0]["Cache-Control"] == "private, no-store"
    for name in ["Last-Modified", "ETag", "Content-Disposition", "Expires"]:
        assert name not in responses[0].headers
    assert [png_chunk_types(r.content) for r in responses] == [["IHDR", "IDAT", "IEND"]] * 2


def test_the_url_carries_neither_the_image_id_nor_its_file_name(client, reader, study):
    for presentation in study.presentations.all():
        url = image_url(presentation)
        assert str(presentation.image_id) not in url.split("/")
        assert presentation.image.file.name not in url
        assert "patient_0042" not in url


@pytest.mark.parametrize("who", ["anonymous", "outsider", "researcher"])
def test_it_rejects_anyone_but_the_assigned_reader(client, study, who, request):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    for presentation in study.presentations.all():
        assert client.get(image_url(presentation)).status_code == 404


@pytest.mark.parametrize("status", ["draft", "ready", "closed"])
def test_it_serves_nothing_while_the_study_is_not_open(client, reader, study, status):
    Study.objects.filter(pk=study.pk).update(status=status)
    client.force_login(reader)
    assert client.get(image_url(study.presentations.first())).status_code == 404


def test_an_unknown_id_is_the_same_404(client, reader, study):
    client.force_login(reader)
    assert client.get(f"/p/{uuid.uuid4()}/image").status_code == 404
    assert client.get("/p/not-a-uuid/image").status_code == 404


def test_a_missing_file_is_a_404_not_a_500(client, reader, study):
    presentation = study.presentations.first()
    presentation.image.file.delete(save=False)
    client.force_login(reader)
    assert client.get(image_url(presentation)).status_code == 404


def test_nginx_can_send_the_file_behind_a_setting(client, reader, filesystem_storage, study, settings):
    settings.READER_IMAGE_ACCEL_PREFIX = "/protected-media/"
    client.force_login(reader)
    presentation = study.presentations.first()
    response = client.get(image_url(presentation))
    assert response["X-Accel-Redirect"] == "/protected-media/" + presentation.image.file.name
    assert response.content == b""
    assert response["Cache-Control"] == "private, no-store"


@pytest.mark.skipif(django_settings.TEST_STORAGE != "s3", reason="needs the S3 server (TEST_STORAGE=s3)")
def test_nginx_can_send_a_file_from_object_storage_by_a_signed_internal_path(client, reader, study, settings):
    """What the README's nginx location does with the header: pass its path to the S3 server."""
    settings.READER_IMAGE_ACCEL_PREFIX = "/protected-s3/"
    client.force_login(reader)
    presentation = study.presentations.first()
    response = client.get(image_url(presentation))
    target = response["X-Accel-Redirect"]
    assert target.startswith("/protected-s3/") and "X-Amz-Signature=" in target
    assert response.content == b"" and response["Cache-Control"] == "private, no-store"
    endpoint = settings.STORAGES["default"]["OPTIONS"]["endpoint_url"]
    fetched = urllib.request.urlopen(endpoint + "/" + target.removeprefix("/protected-s3/"), timeout=10)
    assert fetched.read() == presentation.image.file.open("rb").read()
    # Without the signature the store refuses: the bucket is private.
    unsigned = endpoint + "/" + target.removeprefix("/protected-s3/").split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 403


def test_two_images_of_different_origin_are_the_same_kind_of_file(study):
    real, synthetic = (p.image for p in study.presentations.all())
    assert (real.size, synthetic.size) == (512, 512)
    real_bytes, synthetic_bytes = real.file.open("rb").read(), synthetic.file.open("rb").read()
    # Signature, IHDR (size, bit depth, colour type, filter, interlace) and IDAT's tag.
    assert real_bytes[:33] == synthetic_bytes[:33]
    assert real_bytes[37:41] == synthetic_bytes[37:41] == b"IDAT"
