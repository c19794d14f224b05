"""Reader-facing pages. Views stay thin: parse, call a service or selector, render."""

import logging
import uuid

import markdown
import nh3
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from config.storage import accel_redirect_target

from .blinding import truth_may_be_shown
from .models import Image, Study
from .selectors import (
    presentation_for_reader,
    reader_file,
    reader_state,
    studies_for_reader,
    study_for_reader,
)
from .services import REGION_CORNERS, AnswerRefused, StudyClosed, answer_submit
from .sessions import (
    CHECK_PATCHES,
    CHECK_PLACES,
    SessionFull,
    check_needed,
    display_check_record,
    session_begin,
    session_room_check,
)

logger = logging.getLogger(__name__)
PLACEHOLDER = uuid.UUID(int=0)


def home(request):
    """The landing page after login: a reader's studies, or the way to the admin."""
    return render(request, "studies/home.html", {"studies": studies_for_reader(user=request.user)})


# What instructions may hold once rendered: text formatting and links, no images (a remote
# image would tell a third party who reads the study, and when).
INSTRUCTION_TAGS = {"p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "a", "ul", "ol", "li"}
INSTRUCTION_TAGS |= {"h1", "h2", "h3", "h4", "h5", "h6"}


def _instructions_html(study: Study) -> str:
    # Researchers write Markdown; any HTML in it is escaped first, so it shows as text, never runs.
    # Markdown's own links can still carry javascript: and the like: the sanitiser keeps http(s)
    # and mailto only, and drops images.
    html = markdown.markdown(escape(study.instructions), extensions=["sane_lists"])
    clean = nh3.clean(
        html,
        tags=INSTRUCTION_TAGS,
        attributes={"a": {"href", "title"}, "ol": {"start"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )
    return mark_safe(clean)  # noqa: S308


@require_GET
def study_label(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    if study.status == Study.Status.CLOSED:
        return render(request, "studies/closed.html", {"study": study}, status=200)
    state = reader_state(user=request.user, study=study)
    if state.done:
        return redirect("study_done", study.pk)
    context = {
        "study": study,
        "instructions_html": _instructions_html(study),
        "state_url": reverse("study_state", args=[study.pk]),
        "answer_url_template": reverse("presentation_answer", args=[PLACEHOLDER]),
        "done_url": reverse("study_done", args=[study.pk]),
        "ask_confidence": study.ask_confidence,
        "allow_unsure": study.allow_unsure,
        "allow_back": study.allow_back,
        "ask_reasons": study.ask_reasons,
        "reason_choices": study.reason_choices if study.ask_reasons != Study.AskReasons.NEVER else [],
        "reasons_required": study.reasons_required,
        "ask_reason_text": study.ask_reason_text,
        "ask_region": study.ask_region,
        "region_required": study.region_required,
        "time_limit_ms": (study.time_limit_seconds or 0) * 1000,
        "time_limit_s": study.time_limit_seconds,
        "first_visit": state.answered == 0,
        "session_url": reverse("study_session", args=[study.pk]),
        "check_url": reverse("study_display_check", args=[study.pk]),
        "display_check": study.display_check,
        "check_squares": [("dark", "black"), ("bright", "white")],
        "check_places": CHECK_PLACES,
        "break_every_images": study.break_every_images,
        "break_every_minutes": study.break_every_minutes,
    }
    return render(request, "studies/label.html", context)


def _item(presentation, state) -> dict | None:
    """What the page may know of a presentation: a random id, an image URL, its place in the count."""
    if presentation is None:
        return None
    practice = presentation.is_practice
    if practice:
        n, total = presentation.position + 1, state.practice_total
    else:
        n, total = presentation.position - state.practice_total + 1, state.total - state.practice_total
    item = {
        "id": str(presentation.pk),
        "image": reverse("presentation_image", args=[presentation.pk]),
        "n": n,
        "total": total,
        "practice": practice,
    }
    if presentation.study.allow_back and not practice:
        previous = presentation.previous_id
        item["previous"] = str(previous) if previous else None
        answer = presentation.given
        item["answer"] = (
            {
                "label": answer.label,
                "confidence": answer.confidence,
                "reasons": answer.reasons,
                "region": answer.region,
            }
            if answer
            else None
        )
    return item


def _state_json(user, study: Study, at=None) -> dict:
    state = reader_state(user=user, study=study, at=at)
    found = {"current": _item(state.current, state), "next": _item(state.next, state), "done": state.done}
    if state.wait_until is not None:
        found["wait_until"] = state.wait_until.isoformat()
        found["waiting"] = _washout_text(study, state)
    return found


def _washout_text(study: Study, state) -> str:
    return (
        f"You have read every image once ({state.study_answered} of {state.study_total}). The rest are shown "
        f"again after at least {study.washout_hours} hours (a washout, so that you read them afresh): "
        f"come back after {timezone.localtime(state.wait_until):%A %d %B, %H:%M}. Your place is kept."
    )


@require_GET
def study_state(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    state = _state_json(request.user, study, at=request.GET.get("at"))
    return JsonResponse(state, headers={"Cache-Control": "no-store"})


def _posted_region(post) -> dict | None:
    """`region_kind` and its corners, as posted; None where no region was marked."""
    if not post.get("region_kind"):
        return None
    return {"kind": post["region_kind"], **{name: post.get(f"region_{name}", "") for name in REGION_CORNERS}}


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
            reasons=request.POST.getlist("reasons"),
            reason_text=request.POST.get("reason_text", ""),
            region=_posted_region(request.POST),
        )
    except StudyClosed as exc:
        return JsonResponse({"error": str(exc), "closed": True}, status=409)
    except SessionFull as exc:
        return JsonResponse({"error": str(exc), "session_full": True}, status=409)
    except AnswerRefused as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    state = _state_json(request.user, presentation.study)
    if presentation.study.session_max_images:
        try:
            session_room_check(study=presentation.study, reader=request.user)
        except SessionFull as exc:  # that answer was the session's last: the page says so at once
            state["session_full"] = str(exc)
    if truth_may_be_shown(presentation=presentation):
        # Practice only: the truth, so readers learn the task. Study images never get it,
        # nor practice images that the reader scores in another study.
        state["feedback"] = {
            "truth": "fake" if presentation.image.origin == Image.Origin.SYNTHETIC else "real"
        }
    return JsonResponse(state, headers={"Cache-Control": "no-store"})


def _session_json(study: Study, session) -> dict:
    full = ""
    try:
        session_room_check(study=study, reader=session.reader_id)
    except SessionFull as exc:
        full = str(exc)
    return {
        "number": session.number,
        "answers": session.answers,
        "started": session.started.isoformat(),
        "seconds_so_far": max(0, round((timezone.now() - session.started).total_seconds())),
        "check_needed": check_needed(study, session),
        "check": session.display_check,
        "full": full,
    }


@require_POST
def study_session(request, study_id):
    """Begin (or go on with) the reader's reading session, with the screen the page is on."""
    study = study_for_reader(user=request.user, study_id=study_id)
    if study.status != Study.Status.OPEN:
        return JsonResponse({"error": "This study is closed.", "closed": True}, status=409)
    session = session_begin(
        study=study,
        reader=request.user,
        screen_width=request.POST.get("screen_width"),
        screen_height=request.POST.get("screen_height"),
        pixel_ratio=request.POST.get("pixel_ratio"),
    )
    return JsonResponse(_session_json(study, session), headers={"Cache-Control": "no-store"})


@require_POST
def study_display_check(request, study_id):
    """The reader's answers to the display check, recorded with their session."""
    study = study_for_reader(user=request.user, study_id=study_id)
    if study.status != Study.Status.OPEN:
        return JsonResponse({"error": "This study is closed.", "closed": True}, status=409)
    session = session_begin(study=study, reader=request.user)
    shown = {
        patch: request.POST.get(f"{patch}_shown")
        for patch in CHECK_PATCHES
        if request.POST.get(f"{patch}_shown")
    }
    seen = {
        patch: request.POST.get(f"{patch}_seen")
        for patch in CHECK_PATCHES
        if request.POST.get(f"{patch}_seen")
    }
    try:
        display_check_record(session=session, study=study, shown=shown, seen=seen)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(_session_json(study, session), headers={"Cache-Control": "no-store"})


@require_GET
def study_done(request, study_id):
    study = study_for_reader(user=request.user, study_id=study_id)
    state = reader_state(user=request.user, study=study)
    if not state.done:
        return redirect("study_label", study.pk)
    context = {
        "study": study,
        "answered": state.study_answered,
        "total": state.study_total,
        "practice": state.practice_total,
    }
    return render(request, "studies/done.html", context)


# Anonymous users get the same 404 as everyone not assigned: an image URL never
# redirects to a login page that would confirm it exists.
@login_not_required
@require_GET
def presentation_image(request, presentation_id):
    """The image of one presentation, with headers identical for every image.

    No Last-Modified, no ETag, no file name: nothing but the pixels differs
    between a real and a synthetic image.
    """
    presentation = presentation_for_reader(user=request.user, presentation_id=presentation_id)
    file = reader_file(presentation)
    if settings.READER_IMAGE_ACCEL_PREFIX:
        response = HttpResponse(content_type="image/png")
        response["X-Accel-Redirect"] = accel_redirect_target(file, settings.READER_IMAGE_ACCEL_PREFIX)
    else:
        try:
            with file.open("rb") as f:
                response = HttpResponse(f.read(), content_type="image/png")
        except FileNotFoundError:
            logger.error("The file of image %s is missing from the storage", presentation.image_id)
            raise Http404 from None
    response["Cache-Control"] = "private, no-store"
    return response
