"""Reads of the studies app. Every reader-facing lookup goes through the scoping helpers here."""

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.http import Http404
from django.utils import timezone

from generation.models import GenerativeModel, TrainingJob

from .models import Answer, Image, Presentation, ReadingSession, Study, StudyImage, StudyReader

# What reader-facing lookups leave out of a study: its audit report, which can be large, is for
# researchers only, and every request of the labelling page would otherwise carry it.
READER_DEFERRED = ("audit_report", "preparation_error", "override_reason")

# The lookups that every labelling request makes (the presentation answered or shown, the
# study, and the reader's state) are written in SQL: the ORM took longer to compile them than
# the rest of the request, the database included (docs/benchmarks.md, "Labelling at scale").
# Tables and columns come from the models, so a renamed field fails the tests, not production.
# What the reader's views use of the study and the image; anything else loads when first used.
_STUDY_FIELDS = (
    "id",
    "status",
    "allow_unsure",
    "ask_confidence",
    "allow_back",
    "time_limit_seconds",
    "ask_reasons",
    "reason_choices",
    "reasons_required",
    "ask_reason_text",
    "ask_region",
    "region_required",
    "image_size",
    "session_max_images",
    "washout_hours",
)
_IMAGE_FIELDS = ("id", "origin", "file", "source_sha256", "size")


def _columns(model, alias: str, names) -> list[str]:
    return [f'{alias}."{model._meta.get_field(name).column}"' for name in names]


def _table(model) -> str:
    return f'"{model._meta.db_table}"'


def _presentation_sql(statuses: int) -> str:
    columns = _columns(Presentation, "p", [f.attname for f in Presentation._meta.concrete_fields])
    columns += _columns(Study, "s", _STUDY_FIELDS) + _columns(Image, "i", _IMAGE_FIELDS)
    columns.append('c."file"')
    return (
        f"SELECT {', '.join(columns)} FROM {_table(Presentation)} p"
        f" JOIN {_table(Study)} s ON s.id = p.study_id"
        f" JOIN {_table(Image)} i ON i.id = p.image_id"
        f" JOIN {_table(StudyReader)} r ON r.study_id = p.study_id AND r.reader_id = p.reader_id"
        f" AND r.removed IS NULL"
        f" LEFT JOIN {_table(StudyImage)} c ON c.study_id = p.study_id AND c.image_id = p.image_id"
        f" AND c.file <> ''"
        f" WHERE p.id = %s AND p.reader_id = %s AND s.status IN ({', '.join(['%s'] * statuses)})"
    )


def _loaded(model, names, values):
    """A model instance from some of its columns, each value converted as the ORM converts it
    (booleans and times on SQLite, JSON everywhere); the other columns are deferred."""
    converted = list(values)
    for index, column, converters in _converters(model, tuple(names), connection.vendor):
        for converter in converters:
            converted[index] = converter(converted[index], column, connection)
    # from_db takes some columns in the model's order, whatever the order of `names`.
    by_name = dict(zip(names, converted, strict=True))
    ordered = [f.attname for f in model._meta.concrete_fields if f.attname in by_name]
    return model.from_db(connection.alias, ordered, [by_name[name] for name in ordered])


@functools.cache
def _converters(model, names: tuple, vendor: str) -> list:
    """The columns that need converting, found once per process: on the hot path, only those."""
    found = []
    for index, name in enumerate(names):
        field = model._meta.get_field(name)
        column = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if converters:
            found.append((index, column, converters))
    return found


def presentation_for_reader(*, user, presentation_id, open_only: bool = True) -> Presentation:
    """The presentation if it is this reader's (in an open study); 404 for anything else.

    One answer for 'not yours', 'no such id', 'study not open' and 'not logged in',
    so that nothing can be learnt by probing ids. One query: the study and the image
    come with it, and `study_file`, the study's resized copy of the image where there
    is one (see reader_file).
    """
    if not user.is_authenticated:
        raise Http404
    statuses = [Study.Status.OPEN] if open_only else [Study.Status.OPEN, Study.Status.CLOSED]
    try:
        pk = Presentation._meta.pk.get_db_prep_value(presentation_id, connection)
    except (ValueError, ValidationError):
        raise Http404 from None
    with connection.cursor() as cursor:
        cursor.execute(_presentation_sql(len(statuses)), [pk, user.pk, *statuses])
        row = cursor.fetchone()
    if row is None:
        raise Http404
    own = [f.attname for f in Presentation._meta.concrete_fields]
    presentation = _loaded(Presentation, own, row[: len(own)])
    row = row[len(own) :]
    presentation.study = _loaded(Study, _STUDY_FIELDS, row[: len(_STUDY_FIELDS)])
    row = row[len(_STUDY_FIELDS) :]
    presentation.image = _loaded(Image, _IMAGE_FIELDS, row[: len(_IMAGE_FIELDS)])
    presentation.study_file = row[-1]
    return presentation


def reader_file(presentation: Presentation):
    """The file a reader gets for a presentation: the study's resized copy where there is one."""
    copy = presentation.study_file
    return presentation.image.file if not copy else StudyImage(file=copy).file


def reader_side(presentation: Presentation) -> int:
    """The side in pixels of the square image a reader gets for a presentation (see reader_file)."""
    if hasattr(presentation, "study_file"):
        copy = presentation.study_file
    else:
        copy = (
            StudyImage.objects.filter(study_id=presentation.study_id, image_id=presentation.image_id)
            .values_list("file", flat=True)
            .first()
        )
    return presentation.study.image_size if copy else presentation.image.size


def study_for_reader(*, user, study_id) -> Study:
    """A study this reader is in, open or closed; 404 otherwise (drafts included)."""
    if not user.is_authenticated:
        raise Http404
    try:
        pk = Study._meta.pk.get_db_prep_value(int(study_id), connection)
    except (TypeError, ValueError):
        raise Http404 from None
    names = _study_reader_fields()
    with connection.cursor() as cursor:
        cursor.execute(_study_sql(names), [pk, user.pk, Study.Status.OPEN, Study.Status.CLOSED])
        row = cursor.fetchone()
    if row is None:
        raise Http404
    return _loaded(Study, names, row)


def _study_reader_fields() -> list[str]:
    return [f.attname for f in Study._meta.concrete_fields if f.name not in READER_DEFERRED]


def _study_sql(names) -> str:
    return (
        f"SELECT {', '.join(_columns(Study, 's', names))} FROM {_table(Study)} s"
        f" WHERE s.id = %s AND EXISTS (SELECT 1 FROM {_table(StudyReader)} r"
        f" WHERE r.study_id = s.id AND r.reader_id = %s AND r.removed IS NULL)"
        f" AND s.status IN (%s, %s)"
    )


@dataclass(frozen=True)
class ReaderState:
    current: Presentation | None
    next: Presentation | None
    answered: int
    total: int
    practice_total: int = 0
    practice_answered: int = 0
    wait_until: datetime | None = None  # the repeats open then (a study's washout)

    @property
    def done(self) -> bool:
        return self.current is None and self.wait_until is None

    # Counts of the study's own images, practice apart: what every page shows as "n of N".
    @property
    def study_total(self) -> int:
        return self.total - self.practice_total

    @property
    def study_answered(self) -> int:
        return self.answered - self.practice_answered


def _with_previous(presentations, study: Study):
    """Where going back is allowed: each presentation's `previous_id`, the answered study image
    before it (never practice), for the page's Back button."""
    if not study.allow_back:
        return presentations
    previous = Presentation.objects.filter(
        study=OuterRef("study"),
        reader=OuterRef("reader"),
        position__lt=OuterRef("position"),
        is_practice=False,
        answer__isnull=False,
    ).order_by("-position")
    return presentations.annotate(previous_id=Subquery(previous.values("pk")[:1]))


def _pending_sql(with_previous: bool) -> str:
    """The first two unanswered presentations, each with the counts of the reader's sequence."""
    p, a = _table(Presentation), _table(Answer)
    mine = f"FROM {p} t WHERE t.study_id = %(study)s AND t.reader_id = %(reader)s"
    previous = (
        f", (SELECT b.id FROM {p} b JOIN {a} ba ON ba.presentation_id = b.id"
        f" WHERE b.study_id = %(study)s AND b.reader_id = %(reader)s AND b.position < p.position"
        f" AND NOT b.is_practice ORDER BY b.position DESC LIMIT 1) AS previous_id"
        if with_previous
        else ""
    )
    return (
        f"SELECT p.*, COUNT(*) OVER () AS left_count,"
        f" COUNT(*) FILTER (WHERE p.is_practice) OVER () AS practice_left,"
        f" (SELECT COUNT(*) {mine}) AS total_count,"
        f" (SELECT COUNT(*) {mine} AND t.is_practice) AS practice_count{previous}"
        f" FROM {p} p LEFT JOIN {a} a ON a.presentation_id = p.id"
        f" WHERE p.study_id = %(study)s AND p.reader_id = %(reader)s AND a.id IS NULL"
        f" ORDER BY p.position LIMIT 2"
    )


def repeats_open(*, study: Study, reader) -> datetime:
    """When a reader's repeats open in a study with a washout: that long after their last first read."""
    last = Answer.objects.filter(
        presentation__study=study,
        presentation__reader=reader,
        presentation__is_repeat=False,
        presentation__is_practice=False,
    ).aggregate(last=Max("created"))["last"]
    return (last or timezone.now()) + timedelta(hours=study.washout_hours or 0)


def reader_state(*, user, study: Study, at=None) -> ReaderState:
    """Where a reader is: the first unanswered presentation and the one after it.

    One query, whatever the length of the sequence: the first two unanswered
    presentations, each carrying the counts (windows over the unanswered ones, and
    subqueries over the whole sequence, which never changes once built). Only a
    finished reader, who has no unanswered presentation to carry them, costs a second.
    Each presentation returned has `given`, its answer (None but on a step back).

    `at` (a presentation id) is a step back to an answered image, where the study
    allows going back; anything else there is a 404, like every other probe.
    """

    # Built only where it is used (a finished reader, a step back): building a queryset costs
    # more than running the raw query below.
    def mine():
        return Presentation.objects.filter(study=study, reader=user)

    params = {"study": study.pk, "reader": user.pk}
    pending = list(Presentation.objects.raw(_pending_sql(study.allow_back), params))
    if pending:
        first = pending[0]
        total, practice = first.total_count, first.practice_count
        answered, practice_answered = total - first.left_count, practice - first.practice_left
    else:
        counts = mine().aggregate(total=Count("pk"), practice=Count("pk", filter=Q(is_practice=True)))
        total, practice = counts["total"], counts["practice"]
        answered, practice_answered = total, practice
    for presentation in pending:
        presentation.given = None
        if study.allow_back and presentation.previous_id is not None:
            presentation.previous_id = Presentation._meta.pk.to_python(presentation.previous_id)
    current = pending[0] if pending else None
    following = pending[1] if len(pending) > 1 else None
    if at is not None:
        if not study.allow_back:
            raise Http404
        try:
            back = _with_previous(mine().select_related("answer"), study).get(
                pk=at, answer__isnull=False, is_practice=False
            )
        except (Presentation.DoesNotExist, ValueError, ValidationError):
            raise Http404 from None
        back.given = back.answer
        current, following = back, current
    for presentation in (current, following):
        if presentation is not None:
            presentation.study = study  # known already: the study's row is not loaded again
    wait_until = None
    if at is None and current is not None and current.is_repeat and study.washout_hours:
        wait_until = repeats_open(study=study, reader=user)
        if wait_until <= timezone.now():
            wait_until = None
        else:
            current = following = None
    return ReaderState(
        current=current,
        next=following,
        wait_until=wait_until,
        answered=answered,
        total=total,
        practice_total=practice,
        practice_answered=practice_answered,
    )


def study_progress(study: Study) -> list[dict]:
    """Each reader's progress, for researchers: answered / total and the last answer's time."""
    rows = (
        Presentation.objects.filter(study=study, is_practice=False)
        .values("reader", "reader__username")
        .annotate(
            total=Count("pk"),
            answered=Count("pk", filter=Q(answer__isnull=False)),
            last=Max("answer__updated"),
        )
        .order_by("reader__username")
    )
    removed = dict(study.readers.values_list("reader_id", "removed"))
    sessions = reading_sessions_by_reader(study)
    rows = [
        {**row, "removed": removed.get(row["reader"]), "sessions": sessions.get(row["reader"])}
        for row in rows
    ]
    seen = {row["reader"] for row in rows}
    waiting = [
        {
            "reader": place.reader_id,
            "reader__username": place.reader.username,
            "total": 0,
            "answered": 0,
            "last": None,
            "removed": place.removed,
            "sessions": sessions.get(place.reader_id),
        }
        for place in study.readers.select_related("reader")
        if place.reader_id not in seen
    ]
    return list(rows) + waiting


def reading_sessions_by_reader(study: Study, readers=None) -> dict[int, dict]:
    """Reader id -> their sessions in the study: how many, the images and viewing time in them, the
    time between each one's start and its last answer, and the latest display check with its screen."""
    found: dict[int, dict] = {}
    rows = ReadingSession.objects.filter(study=study).order_by("reader", "number")
    if readers is not None:
        rows = rows.filter(reader__in=readers)
    for session in rows:
        mine = found.setdefault(
            session.reader_id,
            {"count": 0, "answers": 0, "viewing_ms": 0, "minutes": 0.0, "check": None, "last": None},
        )
        mine["count"] += 1
        mine["answers"] += session.answers
        mine["viewing_ms"] += session.viewing_ms
        mine["minutes"] += (session.last_seen - session.started).total_seconds() / 60
        mine["last"] = session
        if session.display_check:
            mine["check"] = session
    for mine in found.values():
        mine["viewing_minutes"] = mine["viewing_ms"] / 60000
    return found


def studies_for_reader(*, user) -> list[dict]:
    """The reader's open and closed studies with their progress, for 'My studies'.

    Counts are of the study's own images, as the labelling page and the admin
    count them; practice images are counted apart.
    """
    places = (
        StudyReader.objects.filter(
            reader=user, removed__isnull=True, study__status__in=[Study.Status.OPEN, Study.Status.CLOSED]
        )
        .select_related("study")
        .order_by("-study__created")
    )
    rows = []
    for place in places:
        counts = Presentation.objects.filter(study=place.study, reader=user).aggregate(
            total=Count("pk", filter=Q(is_practice=False)),
            answered=Count("pk", filter=Q(is_practice=False, answer__isnull=False)),
            practice_total=Count("pk", filter=Q(is_practice=True)),
            practice_answered=Count("pk", filter=Q(is_practice=True, answer__isnull=False)),
        )
        finished = counts["answered"] + counts["practice_answered"]
        counts["finished"] = finished == counts["total"] + counts["practice_total"]
        sessions = reading_sessions_by_reader(place.study, readers=[user.pk]).get(user.pk)
        rows.append({"study": place.study, **counts, "sessions": sessions})
    return rows


@dataclass(frozen=True)
class Learnt:
    """Images a model under study learnt from, as one training record chain lists them.

    `trained` is the model whose finished training jobs list the images: the model
    under study itself, or a model it was fine-tuned from (directly or further back).
    """

    model: str
    trained: str
    ids: frozenset[int]
    sources: frozenset[str]
    pngs: frozenset[str]

    @property
    def label(self) -> str:
        if self.trained == self.model:
            return f"‘{self.model}’"
        return f"‘{self.model}’ (fine-tuned from ‘{self.trained}’)"

    def matches(self, prefix: str = "") -> Q:
        """Images that are one of these: the same row, the same source file or the same reader PNG.

        The same radiograph imported into another set is another row with the same
        source, and the same patient.
        """
        return (
            Q(**{f"{prefix}pk__in": self.ids})
            | Q(**{f"{prefix}source_sha256__in": self.sources})
            | Q(**{f"{prefix}png_sha256__in": self.pngs})
        )


def study_training_images(study: Study) -> list[Learnt]:
    """What the study's models were trained on, by their training records and their bases' records.

    Only finished jobs count: they alone registered a model. A model fine-tuned
    from another inherits everything its base (and the base's base) learnt.
    """
    arms = study.arms.order_by("model__name").values_list("model_id", "model__name")
    return [
        _learnt(name, trained, images)
        for model_id, name in arms
        for trained, images in _lineage(model_id)
        if images
    ]


def _lineage(model_id: int):
    """(name, training images) of a model and of each model it was fine-tuned from, nearest first."""
    seen: set[int] = set()
    chain = [model_id]
    while chain:
        current = chain.pop(0)
        if current in seen:  # a cycle of bases cannot be made by training, but costs nothing to stop
            continue
        seen.add(current)
        jobs = TrainingJob.objects.filter(model=current, status=TrainingJob.Status.DONE).order_by("pk")
        images: list[dict] = []
        for record, base_id in jobs.values_list("record", "base_id"):
            images += (record or {}).get("images", [])
            chain += [base_id] if base_id is not None else []
        yield GenerativeModel.objects.get(pk=current).name, images


def _learnt(model: str, trained: str, images: list[dict]) -> Learnt:
    return Learnt(
        model=model,
        trained=trained,
        ids=frozenset(image["id"] for image in images if image.get("id") is not None),
        sources=frozenset(image["source_sha256"] for image in images if image.get("source_sha256")),
        pngs=frozenset(image["png_sha256"] for image in images if image.get("png_sha256")),
    )
