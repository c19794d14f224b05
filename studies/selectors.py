"""Reads of the studies app. Every reader-facing lookup goes through the scoping helpers here."""

from dataclasses import dataclass

from django.db.models import Count, Q
from django.http import Http404

from .models import Presentation, Study, StudyReader


def presentation_for_reader(*, user, presentation_id, open_only: bool = True) -> Presentation:
    """The presentation if it is this reader's (in an open study); 404 for anything else.

    One answer for 'not yours', 'no such id', 'study not open' and 'not logged in',
    so that nothing can be learnt by probing ids.
    """
    if not user.is_authenticated:
        raise Http404
    statuses = [Study.Status.OPEN] if open_only else [Study.Status.OPEN, Study.Status.CLOSED]
    try:
        return Presentation.objects.select_related("image", "study").get(
            pk=presentation_id, reader=user, study__status__in=statuses
        )
    except (Presentation.DoesNotExist, ValueError):
        raise Http404 from None


def study_for_reader(*, user, study_id) -> Study:
    """A study this reader is in, open or closed; 404 otherwise (drafts included)."""
    if not user.is_authenticated:
        raise Http404
    try:
        return Study.objects.get(
            pk=study_id, readers__reader=user, status__in=[Study.Status.OPEN, Study.Status.CLOSED]
        )
    except (Study.DoesNotExist, ValueError):
        raise Http404 from None


@dataclass(frozen=True)
class ReaderState:
    current: Presentation | None
    next: Presentation | None
    answered: int
    total: int

    @property
    def done(self) -> bool:
        return self.current is None


def reader_state(*, user, study: Study) -> ReaderState:
    """Where a reader is: the first unanswered presentation and the one after it."""
    mine = Presentation.objects.filter(study=study, reader=user)
    total = mine.count()
    pending = list(mine.filter(answer__isnull=True).order_by("position")[:2])
    return ReaderState(
        current=pending[0] if pending else None,
        next=pending[1] if len(pending) > 1 else None,
        answered=total - mine.filter(answer__isnull=True).count(),
        total=total,
    )


def studies_for_reader(*, user) -> list[dict]:
    """The reader's open and closed studies with their progress, for 'My studies'."""
    places = (
        StudyReader.objects.filter(reader=user, study__status__in=[Study.Status.OPEN, Study.Status.CLOSED])
        .select_related("study")
        .order_by("-study__created")
    )
    rows = []
    for place in places:
        counts = Presentation.objects.filter(study=place.study, reader=user).aggregate(
            total=Count("pk"), answered=Count("pk", filter=Q(answer__isnull=False))
        )
        rows.append({"study": place.study, **counts})
    return rows
