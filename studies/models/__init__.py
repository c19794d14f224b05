"""Models of reader studies, one module per idea."""

from .images import Image, ImageSet, ImportJob, ImportResult
from .studies import Answer, Presentation, ReadingSession, Study, StudyImage, StudyModel, StudyReader

__all__ = [
    "Answer",
    "Image",
    "ImageSet",
    "ImportJob",
    "ImportResult",
    "Presentation",
    "ReadingSession",
    "Study",
    "StudyImage",
    "StudyModel",
    "StudyReader",
]
