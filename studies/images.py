"""Writing reader images and originals: opaque names, atomic files, no telling file times.

The storage (config/storage.py) makes each write atomic and gives every file the same time.

Real radiographs (on import) and synthetic images (on generation) both come
through `image_build`, so both get the same normaliser and the same kind of file.
"""

import hashlib

from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models.fields.files import FieldFile

from config.storage import NEUTRAL_MTIME  # noqa: F401  (every file's time, set by the storage)

from .imaging.decode import Decoded
from .imaging.normalise import normalise
from .models import Image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_write(field: FieldFile, data: bytes) -> None:
    """Save bytes under the field's opaque name, whole or not at all (config/storage.py)."""
    field.save("opaque", ContentFile(data), save=False)


def files_delete(image: Image) -> None:
    for field in (image.file, image.original):
        if field:
            field.delete(save=False)


def image_build(*, decoded: Decoded, origin: str, size: int | None = None, **fields) -> Image:
    """An unsaved Image with its normalised reader file already written."""
    size = size or settings.READER_IMAGE_SIZE
    png = normalise(decoded.pixels, size=size)
    image = Image(
        origin=origin,
        size=size,
        png_sha256=sha256(png),
        source_format=decoded.source_format,
        source_width=decoded.width,
        source_height=decoded.height,
        source_bit_depth=decoded.bit_depth,
        modality=decoded.modality,
        photometric=decoded.photometric,
        transfer_syntax=decoded.transfer_syntax,
        **fields,
    )
    file_write(image.file, png)
    return image
