"""Reader-facing pages. Views stay thin: parse, call a service or selector, render."""

import logging
import uuid

import markdown
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from .models import Study
from .selectors import presentation_for_reader, reader_state, studies_for_reader, study_for_reader
from .services import AnswerRefused, StudyClosed, answer_submit

logger = logging.getLogger(__name__)
PLACEHOLDER = uuid.UUID(int=0)


def home(request):
    """The landing page after login: a reader's studies, or the way to the admin."""
    return render(request, "studies/home.html", {"studies": studies_for_reader(user=request.user)})


def _instructions_html(study: Study) -> str:
    # Researchers write Markdown; any HTML in it is escaped first, so it shows as text, never runs.
    return mark_safe(markdown.markdown(escape(study.instructions), extensions=["sane_lists"]))  # noqa: S308


@require_GET
def study_label(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    if study.status == Study.Status.CLOSED:
        return render(request, "studies/closed.html", {"study": study}, status=200)
    if reader_state(user=request.user, study=study).done:
        return redirect("study_done", study.pk)
    context = {
        "study": study,
        "instructions_html": _instructions_html(study),
        "state_url": reverse("study_state", args=[study.pk]),
        "answer_url_template": reverse("presentation_answer", args=[PLACEHOLDER]),
        "done_url": reverse("study_done", args=[study.pk]),
        "ask_confidence": study.ask_confidence,
        "allow_unsure": study.allow_unsure,
        "allow_back": False,
        "first_visit": reader_state(user=request.user, study=study).answered == 0,
    }
    return render(request, "studies/label.html", context)


def _state_json(user, study: Study) -> dict:
    state = reader_state(user=user, study=study)

    def item(presentation, n):
        if presentation is None:
            return None
        return {
            "id": str(presentation.pk),
            "image": reverse("presentation_image", args=[presentation.pk]),
            "n": n,
            "total": state.total,
        }

    return {
        "current": item(state.current, state.answered + 1),
        "next": item(state.next, state.answered + 2),
        "done": state.done,
    }


@require_GET
def study_state(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    return JsonResponse(_state_json(request.user, study), headers={"Cache-Control": "no-store"})


@require_POST
def presentation_answer(request, presentation_id):
    presentation = presentation_for_reader(
        user=request.user, presentation_id=presentation_id, open_only=False
    )
    try:
        answer_submit(
            presentation=presentation,
            label=request.POST.get("label", ""),
            confidence=request.POST.get("confidence"),
            viewing_ms=request.POST.get("viewing_ms", 0),
        )
    except StudyClosed as exc:
        return JsonResponse({"error": str(exc), "closed": True}, status=409)
    except AnswerRefused as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(_state_json(request.user, presentation.study), headers={"Cache-Control": "no-store"})


@require_GET
def study_done(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    state = reader_state(user=request.user, study=study)
    if not state.done:
        return redirect("study_label", study.pk)
    return render(
        request, "studies/done.html", {"study": study, "answered": state.answered, "total": state.total}
    )


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
