"""Writing reader images and originals: opaque names, atomic files, no telling file times.

Real radiographs (on import) and synthetic images (on generation) both come
through `image_build`, so both get the same normaliser and the same kind of file.
"""

import hashlib
import os

from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models.fields.files import FieldFile

from .imaging.decode import Decoded
from .imaging.normalise import normalise
from .models import Image

# Every stored file gets this modification time (2000-01-01), so a Last-Modified
# or ETag made from it by a web server cannot date an image or tell real from generated.
NEUTRAL_MTIME = 946_684_800


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_write(field: FieldFile, data: bytes) -> None:
    """Save bytes under the field's opaque name, then blank the file's time."""
    field.save("opaque", ContentFile(data), save=False)
    try:
        path = field.path
    except NotImplementedError:  # storage without local paths: nothing to blank
        return
    os.utime(path, (NEUTRAL_MTIME, NEUTRAL_MTIME))


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
