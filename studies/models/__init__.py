"""Models of reader studies, one module per idea."""

from .images import Image, ImageSet, ImportJob, ImportResult
from .studies import Answer, Presentation, Study, StudyImage, StudyModel, StudyReader

__all__ = [
    "Answer",
    "Image",
    "ImageSet",
    "ImportJob",
    "ImportResult",
    "Presentation",
    "Study",
    "StudyImage",
    "StudyModel",
    "StudyReader",
]
