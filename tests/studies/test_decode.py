"""Decoding untrusted files: real DICOM from pydicom's test data, PNG, JPEG and TIFF."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from studies.imaging.decode import Decoded, ImageRefused, decode
from studies.imaging.phantoms import phantom, write_dicom
from tests.studies.files import dicom, jpeg, png8, png16

PYDICOM_FILES = sorted(f for f in get_testdata_files() if Path(f).is_file())


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: Path(p).name)
def test_every_pydicom_test_file_imports_or_is_refused_with_a_reason(path):
    data = Path(path).read_bytes()
    try:
        decoded = decode(data)
    except ImageRefused as refusal:
        assert len(str(refusal)) > 10
        return
    assert isinstance(decoded, Decoded)
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.ndim == 2
    assert 0.0 <= decoded.pixels.min() <= decoded.pixels.max() <= 1.0
    assert decoded.source_format == "DICOM"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("JPEG2000.dcm", "JPEG 2000"),
        ("JPGExtended.dcm", "JPEG Extended"),
        ("693_J2KI.dcm", "JPEG 2000"),
        ("SC_rgb_jpeg.dcm", "JPEG Baseline"),
        ("GDCMJ2K_TextGBR.dcm", "JPEG 2000"),
        ("image_dfl.dcm", "Deflated"),
        ("examples_palette.dcm", "Explicit VR Little Endian"),
        ("CT_small.dcm", None),
    ],
)
def test_real_compressed_and_colour_dicom_files_decode(name, expected):
    data = Path(get_testdata_file(name)).read_bytes()
    if expected is None:
        with pytest.raises(ImageRefused, match=r"too small \(128 x 128 pixels"):
            decode(data)
        return
    decoded = decode(data)
    assert expected in decoded.transfer_syntax
    assert decoded.pixels.std() > 0.05  # a picture, not a flat field


@pytest.mark.parametrize(
    "name, reason",
    [
        ("DICOMDIR", "a DICOMDIR"),
        ("reportsi.dcm", "without pixel data (SOP class: Basic Text SR Storage)"),
        ("rtplan.dcm", "without pixel data (SOP class: RT Plan Storage)"),
        ("waveform_ecg.dcm", "without pixel data (SOP class: 12-lead ECG Waveform Storage)"),
        ("examples_ybr_color.dcm", "multi-frame DICOM (30 frames)"),
        ("liver_1frame.dcm", "modality SEG is a segmentation"),
        (
            "JPEG-lossy.dcm",
            "cannot decode pixel data in transfer syntax JPEG Extended (Process 2 and 4) "
            "(1.2.840.10008.1.2.4.51)",
        ),
        ("no_meta.dcm", "not a DICOM, PNG, JPEG or TIFF file"),
        ("meta_missing_tsyntax.dcm", "without Rows and Columns"),
    ],
)
def test_non_images_and_undecodable_dicom_are_refused_naming_the_reason(name, reason):
    with pytest.raises(ImageRefused) as refusal:
        decode(Path(get_testdata_file(name)).read_bytes())
    assert reason in str(refusal.value)


def test_a_real_monochrome1_cr_comes_out_with_bone_bright(tmp_path):
    """pydicom's CR file 6278 is MONOCHROME1 (high stored values are dark)."""
    ds = pydicom.dcmread(_find("6278"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    # Blow its 16 x 16 pixels up to 256 x 256 so it passes the size check; the header is its own.
    big = np.kron(ds.pixel_array, np.ones((16, 16), dtype=ds.pixel_array.dtype))
    ds.Rows, ds.Columns = big.shape
    ds.PixelData = big.tobytes()
    path = tmp_path / "cr.dcm"
    ds.save_as(path)
    decoded = decode(path.read_bytes())
    stored = big.astype(float)
    # The highest stored value is shown darkest, the lowest brightest.
    assert decoded.pixels[np.unravel_index(stored.argmax(), stored.shape)] < decoded.pixels.mean()
    assert decoded.pixels[np.unravel_index(stored.argmin(), stored.shape)] > decoded.pixels.mean()
    assert decoded.photometric == "MONOCHROME1" and decoded.modality == "CR"


def _find(name: str) -> str:
    return next(f for f in PYDICOM_FILES if Path(f).name == name)


def test_monochrome1_and_monochrome2_phantoms_look_the_same(tmp_path):
    mono2 = decode(dicom(tmp_path, seed=3, monochrome1=False))
    mono1 = decode(dicom(tmp_path, seed=3, monochrome1=True))
    assert np.abs(mono1.pixels - mono2.pixels).max() < 2 / 4095
    assert mono1.photometric == "MONOCHROME1"


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_syntaxes_decode_to_the_same_pixels_as_uncompressed(tmp_path, syntax):
    path = tmp_path / "plain.dcm"
    write_dicom(path, phantom(5, 256), seed=5)
    plain = decode(path.read_bytes())
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    compressed_path = tmp_path / "compressed.dcm"
    ds.save_as(compressed_path)
    compressed = decode(compressed_path.read_bytes())
    assert syntax.name in compressed.transfer_syntax
    np.testing.assert_array_equal(compressed.pixels, plain.pixels)


def test_the_first_window_of_the_file_is_applied(tmp_path):
    path = tmp_path / "w.dcm"
    write_dicom(path, phantom(1, 256), seed=1, window=False)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = [1000, 2000], [400, 4000]
    ds.save_as(path)
    pixels = decode(path.read_bytes()).pixels
    stored = ds.pixel_array.astype(float)
    # Window 1000 +- 200: below 800 is black, above 1200 white (DICOM's LINEAR function).
    assert pixels[stored < 799].max() == 0.0
    assert pixels[stored > 1200].min() == 1.0


def test_8_and_16_bit_png_of_one_picture_decode_alike():
    picture = phantom(2, 256)
    eight, sixteen = decode(png8(picture)), decode(png16(picture))
    assert eight.bit_depth == 8 and sixteen.bit_depth == 16
    assert np.abs(eight.pixels - sixteen.pixels).max() <= 0.5 / 255 + 1e-6


def test_12_bit_values_in_a_16_bit_png_are_not_left_nearly_black():
    picture = phantom(2, 256)
    buf = io.BytesIO()
    Image.fromarray(np.rint(picture * 4095).astype(np.uint16)).save(buf, "PNG")
    decoded = decode(buf.getvalue())
    assert decoded.bit_depth == 12
    assert np.abs(decoded.pixels - picture).max() <= 0.5 / 4095 + 1e-6


@pytest.mark.parametrize("mode", ["RGB", "P", "RGBA", "LA", "CMYK"])
def test_colour_palette_and_alpha_images_become_grey(mode):
    picture = phantom(4, 256)
    grey = Image.fromarray(np.rint(picture * 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    grey.convert(mode).save(buf, fmt)
    decoded = decode(buf.getvalue())
    assert decoded.pixels.ndim == 2
    assert np.abs(decoded.pixels - picture).mean() < 0.02


def test_transparent_parts_become_black():
    rgba = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    rgba.paste((255, 255, 255, 0), (0, 0, 128, 256))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    pixels = decode(buf.getvalue()).pixels
    assert pixels[:, :128].max() == 0.0 and pixels[:, 128:].min() == 1.0


def test_jpeg_and_tiff_decode():
    picture = phantom(6, 300)
    assert decode(jpeg(picture)).source_format == "JPEG"
    buf = io.BytesIO()
    Image.fromarray(np.rint(picture * 65535).astype(np.uint16)).save(buf, "TIFF")
    tiff = decode(buf.getvalue())
    assert tiff.source_format == "TIFF" and (tiff.width, tiff.height) == (300, 300)


def _png_with_header(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"Patient notes, not a picture\n" * 20, "not a DICOM, PNG, JPEG or TIFF file"),
        (b"GIF89a" + b"\x00" * 200, "not a DICOM, PNG, JPEG or TIFF file"),
        (b"BM" + b"\x00" * 200, "not a DICOM, PNG, JPEG or TIFF file"),
        (_png_with_header(9000, 9000), "absurd dimensions"),
        (_png_with_header(100_000, 100_000), "absurd dimensions"),
        (_png_with_header(300, 20), "too small (300 x 20 pixels"),
        (_png_with_header(0, 300), "damaged or unreadable PNG file"),
    ],
    ids=["empty", "text", "gif", "bmp", "bomb", "absurd", "small", "zero-width"],
)
def test_bad_files_are_refused_clearly(data, reason):
    with pytest.raises(ImageRefused) as refusal:
        decode(data)
    assert reason in str(refusal.value)


def test_a_truncated_png_is_refused():
    data = png16(phantom(7, 256))
    with pytest.raises(ImageRefused, match="damaged or unreadable PNG file"):
        decode(data[: len(data) // 2])


def test_a_truncated_dicom_is_refused(tmp_path):
    data = dicom(tmp_path, seed=8)
    with pytest.raises(ImageRefused, match="pixel data is less than expected"):
        decode(data[: len(data) - 5000])


def test_a_blank_image_is_refused():
    with pytest.raises(ImageRefused, match="blank image"):
        decode(png8(np.full((256, 256), 0.5, dtype=np.float32)))


def test_a_multi_page_tiff_is_refused():
    pages = [Image.fromarray(np.rint(phantom(s, 256) * 255).astype(np.uint8)) for s in (1, 2)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageRefused, match="TIFF with 2 frames or pages"):
        decode(buf.getvalue())


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A few kB that would inflate to over 256 MB: refused from a bounded inflate."""
    path = tmp_path / "plain.dcm"
    write_dicom(path, phantom(1, 256), seed=1)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.add_new((0x0009, 0x0010), "LO", "BOMB")
    ds.add_new((0x0009, 0x1000), "OB", b"\x00" * (300 * 2**20))
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    data = bomb.read_bytes()
    assert len(data) < 2 * 2**20
    with pytest.raises(ImageRefused, match="inflates to more than 256 MB"):
        decode(data)


def test_a_nan_rescale_slope_is_refused(tmp_path):
    path = tmp_path / "nan.dcm"
    write_dicom(path, phantom(1, 256), seed=1)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = "NaN"
    ds.save_as(path)
    with pytest.raises(ImageRefused, match="NaN or infinity"):
        decode(path.read_bytes())


def test_a_float_tiff_with_infinities_is_refused():
    values = phantom(1, 256).astype(np.float32)
    values[:20] = np.inf
    buf = io.BytesIO()
    Image.fromarray(values, mode="F").save(buf, "TIFF")
    with pytest.raises(ImageRefused, match="NaN or infinity"):
        decode(buf.getvalue())


def test_a_window_that_leaves_every_pixel_white_is_refused_as_blank(tmp_path):
    path = tmp_path / "w.dcm"
    write_dicom(path, phantom(1, 256), seed=1)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = -100000, 10
    ds.save_as(path)
    with pytest.raises(ImageRefused, match="blank image"):
        decode(path.read_bytes())
