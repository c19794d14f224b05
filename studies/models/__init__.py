"""Models of reader studies, one module per idea."""

from .images import Image, ImageSet, ImportJob, ImportResult
from .studies import Presentation, Study

__all__ = ["Image", "ImageSet", "ImportJob", "ImportResult", "Presentation", "Study"]
