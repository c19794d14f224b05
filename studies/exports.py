"""A study's reads in the long format of `answers.csv`, streamed from the database.

One row per answer to a study image (practice never), readers under stable
pseudonyms within the study (R01, R02, ... in the order they joined), images
under their id, in the order of the spec's columns.
"""

from collections.abc import Iterator

from django.db.models import Count

from .models import Answer, Image, Presentation, Study

ANSWER_COLUMNS = [
    "study",
    "reader",
    "image",
    "truth",
    "model",
    "prompt",
    "label",
    "confidence",
    "seconds",
    "position",
    "is_repeat",
    "answered_at",
]


def reader_pseudonyms(study: Study) -> dict[int, str]:
    """User id -> a pseudonym that is stable within the study and never the login name."""
    ids = list(study.readers.order_by("created", "pk").values_list("reader_id", flat=True))
    width = max(2, len(str(len(ids))))
    return {user_id: f"R{index:0{width}d}" for index, user_id in enumerate(ids, start=1)}


def answer_rows(study: Study, *, chunk_size: int = 5000) -> Iterator[dict]:
    """Every read of the study, as dicts keyed by ANSWER_COLUMNS, with constant memory."""
    names = reader_pseudonyms(study)
    practice = dict(
        Presentation.objects.filter(study=study, is_practice=True)
        .values("reader")
        .annotate(n=Count("pk"))
        .values_list("reader", "n")
    )
    answers = (
        Answer.objects.filter(presentation__study=study, presentation__is_practice=False)
        .order_by("presentation__reader", "presentation__position")
        .values_list(
            "presentation__reader",
            "presentation__image",
            "presentation__image__origin",
            "presentation__image__generated__version__model__name",
            "presentation__image__generated__prompt",
            "label",
            "confidence",
            "viewing_ms",
            "presentation__position",
            "presentation__is_repeat",
            "updated",
        )
        .iterator(chunk_size=chunk_size)
    )
    for reader, image, origin, model, prompt, label, confidence, ms, position, repeat, answered in answers:
        yield {
            "study": study.pk,
            "reader": names[reader],
            "image": image,
            "truth": "fake" if origin == Image.Origin.SYNTHETIC else "real",
            "model": model or "",
            "prompt": prompt or "",
            "label": label,
            "confidence": confidence,
            "seconds": ms / 1000,
            "position": position - practice.get(reader, 0) + 1,
            "is_repeat": repeat,
            "answered_at": answered,
        }
