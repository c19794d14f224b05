"""Writes of reader studies: readers' sequences and their answers."""

import random
import secrets

from django.db import IntegrityError, transaction

from .models import Answer, Image, Presentation, Study, StudyReader


class AnswerRefused(Exception):
    """An answer that cannot be taken; the message is for the reader."""


class StudyClosed(AnswerRefused):
    pass


@transaction.atomic
def study_reader_add(*, study: Study, reader, images: list[Image]) -> StudyReader:
    """Give a reader their own sequence: the images shuffled with a recorded secure seed.

    The seed comes from the operating system's secure source, so no reader can
    predict an order; recorded, it lets a researcher rebuild the order exactly.
    """
    place, created = StudyReader.objects.get_or_create(
        study=study, reader=reader, defaults={"seed": secrets.randbits(63)}
    )
    if not created:
        return place
    order = list(images)
    random.Random(place.seed).shuffle(order)
    Presentation.objects.bulk_create(
        Presentation(study=study, reader=reader, image=image, position=position)
        for position, image in enumerate(order)
    )
    return place


def answer_submit(*, presentation: Presentation, label: str, confidence=None, viewing_ms=0) -> Answer:
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
    try:
        viewing_ms = max(0, min(int(viewing_ms), 24 * 3600 * 1000))
    except (TypeError, ValueError):
        viewing_ms = 0
    existing = Answer.objects.filter(presentation=presentation).first()
    if existing:
        return existing  # changing an answer needs allow_back, which comes with going back
    try:
        with transaction.atomic():
            return Answer.objects.create(
                presentation=presentation, label=label, confidence=confidence, viewing_ms=viewing_ms
            )
    except IntegrityError:
        return Answer.objects.get(presentation=presentation)
