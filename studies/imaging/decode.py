"""Decoding untrusted radiograph files (DICOM, PNG, JPEG, TIFF) into grey levels.

Every file is treated as hostile: its type is judged by its bytes, never its name;
sizes are checked before pixels are decoded; and whatever goes wrong comes out as
one `ImageRefused` whose message a researcher can act on.
"""

import io
import logging
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

# pydicom sets its logger to WARNING when it is imported, after Django configured
# logging; each failed decoder would then print a traceback. The refusal says why.
logging.getLogger("pydicom").setLevel(logging.CRITICAL)

# A chest radiograph is at most ~4300 x 4300; mammograms reach ~4100 x 5600. Far
# beyond that is a decompression bomb or an error, not a radiograph.
MAX_PIXELS = 64_000_000
MAX_SIDE = 16_384
# Below this the picture would be blown up to the study's size, and the blur would
# tell readers something about where it came from.
MIN_SIDE = 256
# The largest radiograph these limits let in, 64 million 16-bit pixels, is 122 MB
# uncompressed; 256 MB leaves room for colour, padding and headers. Anything bigger
# is not a picture these limits would take, so it is never read whole.
MAX_FILE_BYTES = 256 * 2**20
# A deflated DICOM dataset is inflated whole by pydicom; a few MB could become many GB.
MAX_INFLATED_BYTES = 256 * 1024 * 1024
DEFLATED = "1.2.840.10008.1.2.1.99"

PILLOW_FORMATS = ("PNG", "JPEG", "TIFF")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Objects with pixel data that are not pictures of a patient.
NOT_PICTURES = {"SEG": "a segmentation", "RTDOSE": "a radiotherapy dose grid"}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageRefused(Exception):
    """A file that cannot become a reader image; the message says why."""


@dataclass(frozen=True)
class Decoded:
    """Grey levels ready for the normaliser, with what researchers keep about the source."""

    pixels: np.ndarray  # 2-D float32 in [0, 1]; 1 is white (bone bright)
    source_format: str  # DICOM, PNG, JPEG or TIFF
    width: int
    height: int
    bit_depth: int
    modality: str = ""
    photometric: str = ""
    transfer_syntax: str = ""


def sniff(data: bytes) -> str | None:
    """The format that the bytes themselves announce, whatever the file is called."""
    if data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def decode(data: bytes) -> Decoded:
    if not data:
        raise ImageRefused("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageRefused(
            f"file too large ({len(data) / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB)"
        )
    kind = sniff(data)
    if kind is None:
        raise ImageRefused(
            "not a DICOM, PNG, JPEG or TIFF file (its first bytes match none of them; "
            "DICOM files need the standard 128-byte preamble and 'DICM')"
        )
    try:
        with warnings.catch_warnings():
            # Decoders warn about every oddity of a file; the refusal reason is what counts.
            warnings.simplefilter("ignore")
            decoded = _decode_dicom(data) if kind == "DICOM" else _decode_pillow(data, kind)
    except ImageRefused:
        raise
    except (MemoryError, RecursionError):
        raise ImageRefused(f"{kind} file could not be decoded within the memory limits") from None
    except Exception as exc:  # a malformed file can raise anything from a decoder
        raise ImageRefused(f"damaged or unreadable {kind} file ({_short(exc)})") from None
    # Whatever the format and the path through it, only real, varied grey levels pass.
    pixels = decoded.pixels
    if not np.isfinite(pixels).all():
        raise ImageRefused("pixel values that are not numbers (NaN or infinity), e.g. from a broken rescale")
    if float(pixels.max()) - float(pixels.min()) < 1e-6:
        raise ImageRefused("blank image (every pixel shows the same grey level)")
    return decoded


def _short(exc: Exception) -> str:
    """One line of an exception's message, for a person to read."""
    lines = [line.strip(" :") for line in str(exc).strip().splitlines() if line.strip(" :")]
    return "; ".join(lines)[:300] if lines else type(exc).__name__


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRefused(f"no pixels ({width} x {height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageRefused(
            f"absurd dimensions ({width} x {height} pixels; at most {MAX_SIDE} on a side "
            f"and {MAX_PIXELS // 1_000_000} million pixels)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRefused(f"too small ({width} x {height} pixels; at least {MIN_SIDE} on each side)")


def _scaled_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    out = (values.astype(np.float32, copy=False) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def robust_window(values: np.ndarray) -> np.ndarray:
    """Map the 0.5th to 99.5th percentile to black and white: for images without a window."""
    sample = values[:: max(1, values.shape[0] // 512), :: max(1, values.shape[1] // 512)]
    low, high = np.percentile(sample, [0.5, 99.5])
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        raise ImageRefused("blank image (every pixel has the same value)")
    return _scaled_window(values, low, high)


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    # ITU-R BT.601 luma, the weights Pillow's convert("L") uses.
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --- DICOM ------------------------------------------------------------------------


def _check_deflated(data: bytes) -> None:
    """Refuse a deflated dataset that would inflate beyond the limit, before pydicom inflates it."""
    fp = io.BytesIO(data)
    read_preamble(fp, force=False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(data[fp.tell() :], MAX_INFLATED_BYTES + 1)
    if len(inflated) > MAX_INFLATED_BYTES:
        raise ImageRefused(
            f"deflated DICOM that inflates to more than {MAX_INFLATED_BYTES // 2**20} MB "
            "(a decompression bomb?)"
        )


def _decode_dicom(data: bytes) -> Decoded:
    try:
        _check_deflated(data)
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError as exc:
        raise ImageRefused(f"not a valid DICOM file ({_short(exc)})") from None
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if sop_class == DICOMDIR_SOP_CLASS:
        raise ImageRefused(
            "a DICOMDIR (an index of other DICOM files), not an image: import the files it lists"
        )
    if "PixelData" not in ds:
        kind = pydicom.uid.UID(sop_class).name if sop_class else "unknown"
        raise ImageRefused(f"DICOM object without pixel data (SOP class: {kind})")
    modality = str(ds.get("Modality", "") or "")
    if modality in NOT_PICTURES:
        raise ImageRefused(f"DICOM modality {modality} is {NOT_PICTURES[modality]}, not a radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRefused(f"multi-frame DICOM ({frames} frames): export each frame as its own file")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageRefused("DICOM image without Rows and Columns: its size is unknown")
    width, height = int(ds.Columns), int(ds.Rows)
    _check_size(width, height)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not ts:
        raise ImageRefused("DICOM file meta names no transfer syntax, so its pixels cannot be read")
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageRefused(
            f"cannot decode pixel data in transfer syntax {ts.name} ({ts}): {_short(exc)}"
        ) from None

    if photometric == "PALETTE COLOR":
        grey = _to_grey(apply_color_lut(arr, ds).astype(np.float32))
        pixels = robust_window(grey)
    elif arr.ndim == 3:  # RGB, or YBR that pydicom has already turned into RGB
        pixels = robust_window(_to_grey(arr.astype(np.float32)))
    elif photometric in ("MONOCHROME1", "MONOCHROME2", ""):
        pixels = _dicom_grey(arr, ds)
        if photometric == "MONOCHROME1":
            # MONOCHROME1 stores bone dark; readers must see it white like every other image.
            pixels = np.subtract(1.0, pixels, out=pixels)
    else:
        raise ImageRefused(f"unsupported DICOM photometric interpretation {photometric!r}")
    return Decoded(
        pixels=pixels,
        source_format="DICOM",
        width=width,
        height=height,
        bit_depth=int(ds.get("BitsStored", 0) or 0),
        modality=modality,
        photometric=photometric,
        transfer_syntax=f"{ts.name} ({ts})"[:128],
    )


def _dicom_grey(arr: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, then the VOI LUT or the first window, else a robust window."""
    values = _modality(arr, ds)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        return _scaled_window(apply_voi_lut(values, ds, index=0, prefer_lut=True), 0, 2**bits - 1)
    window = _first_window(ds)
    if window is None:
        return robust_window(values)
    centre, width = window
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    values = values.astype(np.float32, copy=False)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return _scaled_window(values, centre - width / 2, centre + width / 2)
    # LINEAR as DICOM PS3.3 C.11.2.1.2.1 defines it: centre - 0.5 - (width - 1) / 2 is black.
    low = centre - 0.5 - (width - 1) / 2
    return _scaled_window(values, low, low + (width - 1))


def _modality(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values to modality units; in float32, as float64 would double the memory."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = arr.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _first_window(ds) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    centre = centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    try:
        centre, width = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(centre) or not np.isfinite(width) or width <= 1:
        return None
    return centre, width


# --- PNG, JPEG, TIFF ------------------------------------------------------------------


def _decode_pillow(data: bytes, kind: str) -> Decoded:
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=[kind])
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageRefused(
                f"absurd dimensions (more than {MAX_PIXELS // 1_000_000} million pixels)"
            ) from None
        if getattr(im, "n_frames", 1) > 1:
            raise ImageRefused(f"{kind} with {im.n_frames} frames or pages: one picture per file, please")
        _check_size(*im.size)
        im.load()
    if kind in ("JPEG", "TIFF"):
        im = ImageOps.exif_transpose(im)  # photographed films carry their orientation in EXIF
    bits = 8
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(im).astype(np.float32)
        values = np.clip(values, 0, 65535)
        # Many 16-bit files hold 10, 12 or 14-bit detector values; scale by the bit
        # depth that holds the brightest pixel, so such images are not nearly black.
        peak = float(values.max())
        bits = next(b for b in (8, 10, 12, 14, 16) if peak <= 2**b - 1)
        if peak <= 0:
            raise ImageRefused("blank image (every pixel is black)")
        pixels = values * np.float32(1.0 / (2**bits - 1))
    elif im.mode == "F":
        pixels = robust_window(np.asarray(im, dtype=np.float32))
        bits = 32
    else:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Transparent parts become black, as on a light box with nothing behind them.
            rgba = im.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            im = Image.alpha_composite(black, rgba)
        grey = im.convert("L")
        pixels = np.asarray(grey, dtype=np.float32) * np.float32(1.0 / 255)
    if float(pixels.max()) == float(pixels.min()):
        raise ImageRefused("blank image (every pixel has the same value)")
    return Decoded(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source_format=kind,
        width=im.size[0],
        height=im.size[1],
        bit_depth=bits,
    )
