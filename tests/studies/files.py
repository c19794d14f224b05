"""Test helpers that make image files as bytes, from phantoms or plain arrays."""

import io

import numpy as np
from PIL import Image

from studies.imaging.phantoms import phantom, write_dicom


def png8(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def png16(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(pixels * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(pixels: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8), mode="L").convert(mode).save(
        buf, "JPEG", quality=95
    )
    return buf.getvalue()


def dicom(tmp_path, seed: int = 0, size: int = 512, **kwargs) -> bytes:
    path = tmp_path / f"phantom-{seed}-{size}-{sorted(kwargs.items())}.dcm"
    write_dicom(path, phantom(seed, size), seed=seed, **kwargs)
    return path.read_bytes()


def small_phantom(seed: int = 0, size: int = 256) -> np.ndarray:
    return phantom(seed, size)
