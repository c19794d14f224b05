"""The one normaliser: every image a reader sees, real or synthetic, passes through it.

Same recipe for all, so nothing in the file tells where a picture came from:
grey levels in [0, 1] are centre-cropped to a square, resampled with one full
Lanczos-3 pass (no box pre-reduction for large sources only) to the study's
size, rounded to 8 bits, and written as a PNG holding exactly IHDR, one IDAT
and IEND (no text, time, gamma, ICC or physical-size chunks) with fixed encoder
settings. The same input always gives the same bytes.

Aspect policy: centre-crop, not fit-and-pad. Padding would draw black bars on
non-square pictures only (most real radiographs, hardly any generated image), a
giveaway; cropping a portrait radiograph trims a little above and below the chest.
"""

import functools
import struct
import zlib

import numpy as np
from scipy import sparse

DEFAULT_SIZE = 512
LANCZOS_LOBES = 3
# Level 4: a quarter of level 6's time for files about 4% larger (measured on phantoms).
ZLIB_LEVEL = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def normalise(pixels: np.ndarray, *, size: int = DEFAULT_SIZE) -> bytes:
    """PNG bytes of a 2-D array of grey levels in [0, 1] (1 = white), `size` pixels square."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D array of grey levels, got shape {pixels.shape}")
    if not 16 <= size <= 4096:
        raise ValueError(f"output size {size} is outside 16..4096 pixels")
    if not np.isfinite(pixels).all():
        raise ValueError("the grey levels contain NaN or infinity")
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(pixels[top : top + side, left : left + side], dtype=np.float32)
    weights = lanczos_weights(side, size)
    # Rows, then columns: W @ (W @ S)^T is the resampled picture, transposed.
    grey = np.asarray((weights @ (weights @ square).T).T, dtype=np.float32)
    eight_bit = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    return encode_png(eight_bit)


@functools.lru_cache(maxsize=64)
def lanczos_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """The (n_out, n_in) matrix of one Lanczos-3 resampling along one axis.

    The same coefficients as Pillow's LANCZOS (the kernel widened by the scale
    when shrinking, normalised to sum to 1), applied as two sparse products: a
    full pass at any scale, five times faster than Pillow on a 2500-pixel source.
    """
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = LANCZOS_LOBES * filter_scale
    rows, cols, values = [], [], []
    for out in range(n_out):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), n_in)
        taps = np.arange(first, last)
        x = (taps - centre + 0.5) / filter_scale
        w = np.sinc(x) * np.sinc(x / LANCZOS_LOBES)
        w[np.abs(x) >= LANCZOS_LOBES] = 0.0
        rows.append(np.full(len(taps), out))
        cols.append(taps)
        values.append(w / w.sum())
    return sparse.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_out, n_in),
    )


def encode_png(grey: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG with only the three critical chunks.

    Written by hand rather than by Pillow so that no encoder version can add a
    chunk, split IDAT differently, or change the filter choice behind our back.
    Every row uses the Sub filter (difference from the left neighbour), which
    suits smooth radiographs.
    """
    height, width = grey.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1] = grey[:, 0]
    np.subtract(grey[:, 1:], grey[:, :-1], out=rows[:, 2:], dtype=np.uint8, casting="unsafe")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), ZLIB_LEVEL)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunk_types(data: bytes) -> list[str]:
    """The chunk types of a PNG file in order: for tests and the blinding audit."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    kinds, offset = [], len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kinds.append(data[offset + 4 : offset + 8].decode("latin-1"))
        offset += 12 + length
    return kinds
