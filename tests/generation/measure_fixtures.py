"""Images and weights for the machine measures' tests: planted copies, stored images, random weights."""

import io
import uuid

import numpy as np
from PIL import Image as PILImage

from studies.images import image_build
from studies.imaging.decode import Decoded


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
