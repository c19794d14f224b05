"""Reader-facing pages. Views stay thin: parse, call a service or selector, render."""

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .selectors import presentation_for_reader

logger = logging.getLogger(__name__)


def home(request):
    """The landing page after login: a reader's studies, or the way to the admin."""
    return render(request, "studies/home.html")


# Anonymous users get the same 404 as everyone not assigned: an image URL never
# redirects to a login page that would confirm it exists.
@login_not_required
@require_GET
def presentation_image(request, presentation_id):
    """The image of one presentation, with headers identical for every image.

    No Last-Modified, no ETag, no file name: nothing but the pixels differs
    between a real and a synthetic image.
    """
    image = presentation_for_reader(user=request.user, presentation_id=presentation_id).image
    if settings.READER_IMAGE_ACCEL_PREFIX:
        response = HttpResponse(content_type="image/png")
        response["X-Accel-Redirect"] = settings.READER_IMAGE_ACCEL_PREFIX + image.file.name
    else:
        try:
            with image.file.open("rb") as f:
                response = HttpResponse(f.read(), content_type="image/png")
        except FileNotFoundError:
            logger.error("The file of image %s is missing from MEDIA_ROOT", image.pk)
            raise Http404 from None
    response["Cache-Control"] = "private, no-store"
    return response
