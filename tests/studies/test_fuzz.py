"""Mutated bytes of valid files: the decoder answers with a picture or our refusal, nothing else."""

import functools
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studies.imaging.decode import Decoded, ImageRefused, decode
from studies.imaging.phantoms import phantom
from tests.studies.files import dicom, jpeg, png8, png16


@functools.cache
def seeds() -> dict[str, bytes]:
    picture = phantom(11, 256)
    with tempfile.TemporaryDirectory() as folder:
        return {
            "png8": png8(picture),
            "png16": png16(picture),
            "jpeg": jpeg(picture),
            "dicom": dicom(Path(folder), seed=11),
            "dicom_mono1": dicom(Path(folder), seed=11, monochrome1=True),
        }


@st.composite
def mutated(draw):
    data = bytearray(seeds()[draw(st.sampled_from(sorted(seeds())))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "header":  # where the sizes, bit depths and tags live
            at = draw(st.integers(0, min(len(data), 1200) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_decode_or_are_refused_and_nothing_else(data):
    try:
        result = decode(data)
    except ImageRefused as refusal:
        assert str(refusal)
    else:
        assert isinstance(result, Decoded)
        pixels = result.pixels
        assert pixels.ndim == 2 and pixels.dtype.name == "float32"
        assert np.isfinite(pixels).all() and 0.0 <= pixels.min() < pixels.max() <= 1.0
