"""Reads of the studies app. Every reader-facing lookup goes through `presentation_for_reader`."""

from django.http import Http404

from .models import Presentation, Study


def presentation_for_reader(*, user, presentation_id) -> Presentation:
    """The presentation if it is this reader's in an open study; 404 for anything else.

    One answer for 'not yours', 'no such id', 'study not open' and 'not logged in',
    so that nothing can be learnt by probing ids.
    """
    if not user.is_authenticated:
        raise Http404
    try:
        return Presentation.objects.select_related("image").get(
            pk=presentation_id, reader=user, study__status=Study.Status.OPEN
        )
    except (Presentation.DoesNotExist, ValueError):
        raise Http404 from None
