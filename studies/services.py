"""Writes of reader studies: readers' sequences and their answers."""

import contextlib
import secrets

from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from .blinding import reader_problem
from .models import Answer, Presentation, Study, StudyReader
from .models.studies import MAX_REASON_TEXT
from .selectors import reader_side, repeats_open
from .sessions import session_count_answer, session_room_check


class AnswerRefused(Exception):
    """An answer that cannot be taken; the message is for the reader."""


class StudyClosed(AnswerRefused):
    pass


@transaction.atomic
def study_reader_add(*, study: Study, reader) -> StudyReader:
    """Put a reader in a study, with the seed of their own order of images.

    The seed comes from the operating system's secure source, so no reader can
    predict an order; recorded, it lets a researcher rebuild the order exactly.
    The sequence itself is made when the study opens, or at once if it is open.
    Refused (StudyRefused) where the reader would be told the truth of an image
    they score, in this study or another.
    """
    from .lifecycle import StudyRefused, sequence_build

    # Locked, so that a reader added while the study opens still gets a sequence.
    study = Study.objects.select_for_update().get(pk=study.pk)
    if not StudyReader.objects.filter(study=study, reader=reader, removed__isnull=True).exists():
        # A reader joining late (or coming back after a removal) must not be told the truth
        # of an image they score elsewhere.
        if problem := reader_problem(study=study, reader=reader):
            raise StudyRefused(problem)
    taken = StudyReader.objects.filter(study=study).aggregate(last=Max("number"))["last"] or 0
    place, _ = StudyReader.objects.get_or_create(
        study=study, reader=reader, defaults={"seed": secrets.randbits(63), "number": taken + 1}
    )
    if place.removed is not None:  # back after a removal: the same number, seed and sequence
        place.removed = None
        place.save(update_fields=["removed"])
    if study.status == Study.Status.OPEN:
        sequence_build(place=place)
    return place


@transaction.atomic
def study_reader_remove(*, study: Study, reader) -> StudyReader:
    """Take a reader out of a study: they reach nothing of it any more.

    Their place and answers stay (a removal can be undone by adding them again, and
    the record of what was read is never lost); results leave them out unless asked.
    """
    place = StudyReader.objects.select_for_update().get(study=study, reader=reader)
    if place.removed is None:
        place.removed = timezone.now()
        place.save(update_fields=["removed"])
    return place


def answer_submit(
    *,
    presentation: Presentation,
    label: str,
    confidence=None,
    viewing_ms=0,
    reasons=(),
    reason_text="",
    region: dict | None = None,
) -> Answer:
    """Record a reader's answer; a second submission of the same one changes nothing.

    A double click, a retried request or two open tabs all end with exactly one
    answer: the database allows one per presentation, and a losing insert returns
    the winner's row instead of an error.
    """
    study = presentation.study
    if study.status != Study.Status.OPEN:
        raise StudyClosed("This study is closed: answers are no longer taken.")
    if label not in Answer.Label.values or (label == Answer.Label.UNSURE and not study.allow_unsure):
        allowed = "real, fake or unsure" if study.allow_unsure else "real or fake"
        raise AnswerRefused(f"The answer must be {allowed}.")
    if study.ask_confidence:
        try:
            confidence = int(confidence)
        except (TypeError, ValueError):
            raise AnswerRefused("Choose a confidence from 1 to 5 as well.") from None
        if not 1 <= confidence <= 5:
            raise AnswerRefused("Choose a confidence from 1 to 5 as well.")
    else:
        confidence = None
    viewing_ms = _viewing_ms(viewing_ms)
    reasons, reason_text = _reasons(study, label, list(reasons), str(reason_text or ""))
    region = _region(study, label, region, presentation)
    given = {
        "label": label,
        "confidence": confidence,
        "reasons": reasons,
        "reason_text": reason_text,
        "region": region,
    }
    # The first answer is the common case: insert it straight away; a second one (a retry, a
    # double click, a change) loses to the constraint and is dealt with as a change.
    # In autocommit the INSERT is its own transaction (BEGIN and COMMIT would be two more round
    # trips); inside a caller's transaction a savepoint keeps a losing insert from breaking it.
    session_room_check(study=study, reader=presentation.reader_id)
    if presentation.is_repeat and study.washout_hours:
        opens = repeats_open(study=study, reader=presentation.reader_id)
        if opens > timezone.now():
            raise AnswerRefused(f"This image opens after the study's washout, at {opens:%Y-%m-%d %H:%M} UTC.")
    first = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with first:
            answer = Answer.objects.create(presentation=presentation, viewing_ms=viewing_ms, **given)
    except IntegrityError:
        existing = Answer.objects.get(presentation=presentation)
    else:
        session_count_answer(study=study, reader=presentation.reader_id, viewing_ms=viewing_ms, new=True)
        return answer
    return _answer_change(existing, study=study, given=given, viewing_ms=viewing_ms)


def _asked(when: str, label: str) -> bool:
    return when == Study.AskReasons.ALWAYS or (when == Study.AskReasons.FAKE and label == Answer.Label.FAKE)


def reasons_asked(study: Study, label: str) -> bool:
    return _asked(study.ask_reasons, label)


def region_asked(study: Study, label: str) -> bool:
    return _asked(study.ask_region, label)


REGION_KINDS = ("point", "box")
REGION_CORNERS = ("x0", "y0", "x1", "y1")


def _region(study: Study, label: str, region: dict | None, presentation: Presentation) -> dict | None:
    """The marked region in whole pixels of the image the reader saw (corners inclusive, a point's
    two corners the same), with that image's side; refused where not asked, outside the image or
    (where the study requires one) missing."""
    asked = region_asked(study, label)
    if not region:
        if asked and study.region_required:
            raise AnswerRefused("Mark where on the image: click for a point, drag for a box.")
        return None
    if not asked:
        raise AnswerRefused("This study does not ask for a region with this answer.")
    kind = region.get("kind")
    if kind not in REGION_KINDS:
        raise AnswerRefused(f"A region is a point or a box, not {str(kind)[:20]!r}.")
    size = reader_side(presentation)
    corners = {}
    for name in REGION_CORNERS:
        text = str(region.get(name, "")).strip()
        if not (text.isdecimal() and text.isascii()) or int(text) >= size:
            raise AnswerRefused(
                f"The region's {name} must be a whole pixel from 0 to {size - 1}, not {text[:20]!r}."
            )
        corners[name] = int(text)
    x0, y0, x1, y1 = (corners[name] for name in REGION_CORNERS)
    if kind == "point" and (x1, y1) != (x0, y0):
        raise AnswerRefused("A point's two corners must be the same pixel.")
    if x1 < x0 or y1 < y0:
        raise AnswerRefused("A box's first corner must be its top left (x0 <= x1, y0 <= y1).")
    return {"kind": kind, **corners, "size": size}


def _reasons(study: Study, label: str, reasons: list, text: str) -> tuple[list[str], str]:
    """The reasons in the study's order, each once, and the note; refused where not asked, unknown
    or (where the study requires them) missing."""
    text = text.strip()
    if not reasons_asked(study, label):
        if reasons or text:
            raise AnswerRefused("This study does not ask reasons for this answer.")
        return [], ""
    unknown = [reason for reason in reasons if reason not in study.reason_choices]
    if unknown:
        raise AnswerRefused(f"Unknown reason {str(unknown[0])[:60]!r}: choose from the study's list.")
    if text and not study.ask_reason_text:
        raise AnswerRefused("This study asks no note with the reasons.")
    if len(text) > MAX_REASON_TEXT:
        raise AnswerRefused(f"Keep the note under {MAX_REASON_TEXT} characters.")
    if study.reasons_required and not reasons and not text:
        raise AnswerRefused("Give at least one reason" + (" or a note." if study.ask_reason_text else "."))
    return [reason for reason in study.reason_choices if reason in reasons], text


def _viewing_ms(value) -> int:
    """Milliseconds as a whole number, capped at a day; anything else is refused, not stored as 0.

    int() would take "1.5" as an error and float() would take "NaN" and "inf":
    only digits are accepted, so a broken client is seen instead of skewing reading times.
    """
    text = str(value).strip()
    if not text.isdecimal() or not text.isascii():
        raise AnswerRefused(f"The viewing time must be a whole number of milliseconds, not {text[:20]!r}.")
    return min(int(text), 24 * 3600 * 1000)


def _answer_change(answer: Answer, *, study: Study, given: dict, viewing_ms: int) -> Answer:
    """A second answer to the same presentation: a retry changes nothing; a change needs allow_back.

    Where going back is not allowed, the first answer stands (a double click or
    a second tab is not a change of mind). A change adds its viewing time, so
    `viewing_ms` stays the whole time the image was looked at.
    """

    def same(row: Answer) -> bool:
        return all(getattr(row, name) == value for name, value in given.items())

    if not study.allow_back or same(answer):
        return answer
    with transaction.atomic():
        answer = Answer.objects.select_for_update().get(pk=answer.pk)
        if not same(answer):
            for name, value in given.items():
                setattr(answer, name, value)
            answer.viewing_ms = min(answer.viewing_ms + viewing_ms, 24 * 3600 * 1000)
            answer.save(update_fields=[*given, "viewing_ms", "updated"])
            session_count_answer(
                study=study, reader=answer.presentation.reader_id, viewing_ms=viewing_ms, new=False
            )
    return answer
