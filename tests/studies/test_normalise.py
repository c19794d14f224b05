"""The one normaliser: deterministic bytes, only critical PNG chunks, one aspect policy."""

import io

import numpy as np
import pytest
from PIL import Image

from studies.imaging.decode import decode
from studies.imaging.normalise import normalise, png_chunk_types
from studies.imaging.phantoms import phantom
from tests.studies.files import png8, png16


def pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_the_same_input_gives_the_same_bytes():
    picture = phantom(1, 600)
    assert normalise(picture) == normalise(picture.copy())


def test_the_png_holds_exactly_ihdr_idat_iend():
    png = normalise(phantom(2, 700))
    assert png_chunk_types(png) == ["IHDR", "IDAT", "IEND"]


def test_the_output_is_8_bit_grey_at_the_asked_size():
    for size in (512, 256, 1024):
        image = Image.open(io.BytesIO(normalise(phantom(3, 800), size=size)))
        assert (image.mode, image.size) == ("L", (size, size))
        image.verify()


def test_an_8_bit_and_a_16_bit_version_of_one_picture_give_the_same_output_within_rounding():
    picture = phantom(4, 1024)
    from_8 = pixels_of(normalise(decode(png8(picture)).pixels)).astype(int)
    from_16 = pixels_of(normalise(decode(png16(picture)).pixels)).astype(int)
    assert np.abs(from_8 - from_16).max() <= 1


def test_a_portrait_picture_is_centre_cropped_not_padded():
    portrait = np.full((900, 600), 0.4, dtype=np.float32)
    portrait[:150] = 1.0  # the top and bottom 150 rows fall outside the centred square
    portrait[-150:] = 0.0
    out = pixels_of(normalise(portrait, size=512))
    assert out.min() == out.max() == 102  # 0.4 x 255, no trace of the rows cropped off


def test_grey_levels_map_to_the_full_8_bit_range():
    ramp = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (512, 1))
    out = pixels_of(normalise(ramp))
    assert out[:, 0].max() <= 1 and out[:, -1].min() >= 254


def test_nan_grey_levels_are_refused():
    bad = phantom(5, 512)
    bad[10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalise(bad)
