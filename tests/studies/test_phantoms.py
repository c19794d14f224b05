"""Procedural chest phantoms: deterministic, anatomically laid out, and written as valid PNG16 and DICOM."""

import numpy as np
import pydicom
import pytest
from PIL import Image

from studies.imaging.phantoms import CR_IMAGE_STORAGE, phantom, to_uint16, write_dicom, write_png16

SIZE = 192


def region(image, x0, x1, y0, y1):
    """Mean brightness of a box given in the phantom's normalised coordinates (x right, y down, -1..1)."""
    n = image.shape[0]

    def px(v):
        return int(round((v + 1) / 2 * n))

    return float(image[px(y0) : px(y1), px(x0) : px(x1)].mean())


# Boxes chosen well inside each structure, leaving room for the seed's shifts, turns and size changes.
LUNGS = [(-0.6, -0.35, -0.35, -0.05), (0.35, 0.6, -0.35, -0.05)]
MEDIASTINUM = (-0.05, 0.05, -0.15, 0.2)
ABDOMEN = (-0.5, 0.5, 0.75, 0.9)
CORNERS = [(-1, -0.94, -1, -0.94), (0.94, 1, -1, -0.94), (-1, -0.94, 0.94, 1), (0.94, 1, 0.94, 1)]


def test_the_same_seed_gives_the_same_picture():
    assert np.array_equal(phantom(7, SIZE), phantom(7, SIZE))


def test_different_seeds_give_different_pictures():
    a, b = phantom(1, SIZE), phantom(2, SIZE)
    assert np.abs(a - b).mean() > 0.01


def test_the_picture_is_a_square_float32_image_between_zero_and_one():
    image = phantom(3, SIZE)
    assert image.shape == (SIZE, SIZE)
    assert image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    assert image.max() - image.min() > 0.5


@pytest.mark.parametrize("seed", range(8))
def test_the_lungs_are_darker_than_the_mediastinum_and_the_abdomen(seed):
    image = phantom(seed, SIZE)
    lungs = max(region(image, *box) for box in LUNGS)
    assert region(image, *MEDIASTINUM) > lungs + 0.1
    assert region(image, *ABDOMEN) > lungs + 0.1


@pytest.mark.parametrize("seed", range(8))
def test_the_corners_outside_the_body_are_the_darkest_part(seed):
    image = phantom(seed, SIZE)
    corners = max(region(image, *box) for box in CORNERS)
    inside = min(region(image, *box) for box in [*LUNGS, MEDIASTINUM, ABDOMEN])
    assert corners < 0.1
    assert corners < inside - 0.2


@pytest.mark.parametrize("seed", range(8))
def test_the_heart_bulges_to_the_viewers_right(seed):
    # A PA film shows the patient's left on the viewer's right; a mirrored phantom would fail here.
    image = phantom(seed, SIZE)
    assert region(image, 0.2, 0.35, 0.15, 0.25) > region(image, -0.35, -0.2, 0.15, 0.25) + 0.05


def test_to_uint16_rounds_and_clips_to_the_bit_depth():
    values = np.array([-0.5, 0.0, 0.25, 1.0, 2.0, np.nan], dtype=np.float32)
    assert to_uint16(values, 12).tolist() == [0, 0, 1024, 4095, 4095, 0]
    assert to_uint16(values).tolist() == [0, 0, 16384, 65535, 65535, 0]
    assert to_uint16(values, 8).dtype == np.uint16


def test_to_uint16_refuses_integer_images_and_impossible_depths():
    with pytest.raises(TypeError):
        to_uint16(np.array([0, 1, 2], dtype=np.uint16))
    with pytest.raises(ValueError):
        to_uint16(np.zeros(3, dtype=np.float32), 17)


def test_a_png16_round_trips_as_16_bit_grayscale_with_equal_values(tmp_path):
    image = phantom(4, SIZE)
    path = tmp_path / "chest.png"
    write_png16(path, image)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.mode == "I;16"
        back = np.array(png)
    assert np.array_equal(back, to_uint16(image, 16))


def test_a_dicom_file_is_a_valid_part_10_chest_cr_file(tmp_path):
    path = tmp_path / "chest.dcm"
    write_dicom(path, phantom(9, SIZE), seed=9)
    raw = path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == CR_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == CR_IMAGE_STORAGE
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("CR", "CHEST", "PA")
    assert (str(ds.PatientName), ds.PatientID) == ("PHANTOM^9", "PHANTOM-9")
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (SIZE, SIZE, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.is_valid


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_the_dicom_pixel_array_holds_the_stored_values(tmp_path, bits_stored):
    image = phantom(10, SIZE)
    path = tmp_path / "chest.dcm"
    write_dicom(path, image, bits_stored=bits_stored)
    ds = pydicom.dcmread(path)
    assert ds.BitsStored == bits_stored and ds.HighBit == bits_stored - 1
    assert np.array_equal(ds.pixel_array, to_uint16(image, bits_stored))


def test_a_monochrome1_file_stores_the_inverted_values(tmp_path):
    image = phantom(11, SIZE)
    path = tmp_path / "chest.dcm"
    write_dicom(path, image, monochrome1=True, bits_stored=12)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(ds.pixel_array, 4095 - to_uint16(image, 12))


@pytest.mark.parametrize("monochrome1", [False, True])
def test_the_window_covers_the_stored_range(tmp_path, monochrome1):
    path = tmp_path / "chest.dcm"
    write_dicom(path, phantom(12, SIZE), monochrome1=monochrome1)
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert centre - width / 2 <= pixels.min() and pixels.max() <= centre + width / 2


def test_without_a_window_the_file_has_no_window_tags(tmp_path):
    path = tmp_path / "chest.dcm"
    write_dicom(path, phantom(13, SIZE), window=False)
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and "WindowWidth" not in ds


def test_the_uids_follow_the_seed(tmp_path):
    image = phantom(14, SIZE)

    def uids(name, **kwargs):
        write_dicom(tmp_path / name, image, **kwargs)
        ds = pydicom.dcmread(tmp_path / name)
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    first, again = uids("a.dcm", seed=14), uids("b.dcm", seed=14)
    assert first == again
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    other_seed = uids("c.dcm", seed=15)
    assert not set(first) & set(other_seed)
    # The MONOCHROME1 copy is a different object in the same study, so it must not reuse the instance UID.
    inverted = uids("d.dcm", seed=14, monochrome1=True)
    assert inverted[0] == first[0] and inverted[2] != first[2]
