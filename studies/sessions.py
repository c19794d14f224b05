"""Reading sessions: a reader's stretches of work on a study, over days, with their display check.

A session begins when the labelling page opens (or an answer comes) after more than the session
gap without an answer, and goes on while answers keep coming. Each answer adds to its session's
count and viewing time, so that time per session is recorded as the reader works.
"""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from .models import ReadingSession, Study

CHECK_PATCHES = ("dark", "bright")
CHECK_PLACES = ("top left", "top right", "bottom left", "bottom right")


class SessionFull(Exception):
    """The study's maximum of images per session is reached: the reader takes a break."""


def session_gap() -> timedelta:
    return timedelta(minutes=settings.READING_SESSION_GAP_MINUTES)


def current_session(*, study: Study, reader) -> ReadingSession | None:
    """The reader's session if it is still going (an answer within the gap), else None."""
    cutoff = timezone.now() - session_gap()
    return (
        ReadingSession.objects.filter(study=study, reader=reader, last_seen__gte=cutoff)
        .order_by("-number")
        .first()
    )


def session_begin(
    *, study: Study, reader, screen_width=None, screen_height=None, pixel_ratio=None
) -> ReadingSession:
    """The reader's session now: the one going on, or a new one; the screen is recorded with it."""
    session = current_session(study=study, reader=reader) or _session_new(study=study, reader=reader)
    screen = _screen(screen_width, screen_height, pixel_ratio)
    if screen and any(getattr(session, name) != value for name, value in screen.items()):
        for name, value in screen.items():
            setattr(session, name, value)
        session.save(update_fields=list(screen))
    return session


def _session_new(*, study: Study, reader) -> ReadingSession:
    now = timezone.now()
    for _ in range(3):  # two tabs opening at once: the loser takes the next number, or the winner's
        number = (
            ReadingSession.objects.filter(study=study, reader=reader).aggregate(n=Max("number"))["n"] or 0
        ) + 1
        try:
            with transaction.atomic():
                return ReadingSession.objects.create(
                    study=study,
                    reader_id=getattr(reader, "pk", reader),
                    number=number,
                    started=now,
                    last_seen=now,
                )
        except IntegrityError:
            found = current_session(study=study, reader=reader)
            if found is not None:
                return found
    raise IntegrityError("No session number could be taken")


def _screen(width, height, ratio) -> dict:
    """What the page said of the screen, where it makes sense (CSS pixels, a device pixel ratio)."""
    found = {}
    for name, value, convert, low, high in [
        ("screen_width", width, int, 1, 100_000),
        ("screen_height", height, int, 1, 100_000),
        ("pixel_ratio", ratio, float, 0.1, 20.0),
    ]:
        try:
            number = convert(float(value)) if value not in (None, "") else None
        except (TypeError, ValueError):
            number = None
        if number is not None and low <= number <= high:
            found[name] = round(number, 3) if convert is float else number
    return found


def session_count_answer(*, study: Study, reader, viewing_ms: int, new: bool) -> None:
    """Add an answer (or, `new` false, a change's viewing time) to the reader's session."""
    now = timezone.now()
    changes = {"viewing_ms": F("viewing_ms") + viewing_ms, "last_seen": now}
    if new:
        changes["answers"] = F("answers") + 1
    going = ReadingSession.objects.filter(study=study, reader=reader, last_seen__gte=now - session_gap())
    if not going.update(**changes):
        session = _session_new(study=study, reader=reader)
        ReadingSession.objects.filter(pk=session.pk).update(**changes)


def session_room_check(*, study: Study, reader) -> None:
    """SessionFull where the study's maximum per session is reached in the session going on."""
    if not study.session_max_images:
        return
    session = current_session(study=study, reader=reader)
    if session is not None and session.answers >= study.session_max_images:
        raise SessionFull(
            f"This study asks for at most {study.session_max_images} images in one session. "
            f"Take a break of at least {settings.READING_SESSION_GAP_MINUTES} minutes, then come back: "
            "you will start where you stopped."
        )


def display_check_record(*, session: ReadingSession, study: Study, shown: dict, seen: dict) -> ReadingSession:
    """The reader's answers to the display check: for each faint patch, where it was shown and where
    they saw it (a place, or "none"); passed when they saw both where they were. A skip is recorded
    as such, where the study allows it."""
    if shown == {} and seen == {}:
        if study.display_check == Study.DisplayCheck.REQUIRED:
            raise ValueError("This study requires the display check.")
        result, detail = ReadingSession.Check.SKIPPED, {}
    else:
        for patch in CHECK_PATCHES:
            if shown.get(patch) not in CHECK_PLACES or seen.get(patch) not in (*CHECK_PLACES, "none"):
                raise ValueError(
                    f"Say where the {patch} patch was seen: one of {', '.join(CHECK_PLACES)} or none."
                )
        passed = all(shown[patch] == seen[patch] for patch in CHECK_PATCHES)
        result = ReadingSession.Check.PASSED if passed else ReadingSession.Check.FAILED
        detail = {patch: {"shown": shown[patch], "seen": seen[patch]} for patch in CHECK_PATCHES}
    session.display_check, session.display_detail = result, detail
    session.save(update_fields=["display_check", "display_detail"])
    return session


def check_needed(study: Study, session: ReadingSession) -> bool:
    """Whether the page shows the display check before this session's first image: once a session,
    until passed (or, where only offered, done or skipped)."""
    if study.display_check == Study.DisplayCheck.OFF:
        return False
    if study.display_check == Study.DisplayCheck.REQUIRED:
        return session.display_check != ReadingSession.Check.PASSED
    return session.display_check == ReadingSession.Check.NONE
