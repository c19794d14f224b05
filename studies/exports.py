"""A study's reads in the long format of `answers.csv`, streamed from the database, and its result files.

One row per answer to a study image (practice never), readers under stable
pseudonyms within the study (R001, R002, ... in the order they joined), images
under their id, in the order of the spec's columns. The result files are
written while answers.csv streams out, from the same rows, so one pass over
the database gives all of them.
"""

import csv
import io
import shlex
import zipfile
from collections.abc import Iterator
from pathlib import Path

from django.db import connection, transaction
from django.db.models import Count

from analysis.files import cell, metrics_csv, result_files
from analysis.reads import ReadsBuilder, answers_csv_chunks, region_columns
from analysis.summary import DEFAULT_REPLICATES, DEFAULT_SEED, summarize

from .models import Answer, Image, Presentation, ReadingSession, Study
from .models.studies import pseudonym


def reader_pseudonyms(study: Study, *, include_removed: bool = False) -> dict[int, str]:
    """User id -> the reader's pseudonym in the study (R001, ... by joining order), never the login.

    Readers removed from the study are left out unless asked for: their answers are kept, not counted.
    """
    places = study.readers.all() if include_removed else study.readers.filter(removed__isnull=True)
    return {user_id: pseudonym(number) for user_id, number in places.values_list("reader_id", "number")}


def _image_facts(study: Study) -> dict[int, tuple[str, str, str]]:
    """Image id -> (truth, model, prompt) for the study's images: looked up once, not on every read."""
    shown = Presentation.objects.filter(study=study, is_practice=False).values("image")
    facts = Image.objects.filter(pk__in=shown).values_list(
        "pk", "origin", "generated__version__model__name", "generated__prompt"
    )
    return {
        pk: ("fake" if origin == Image.Origin.SYNTHETIC else "real", model or "", prompt or "")
        for pk, origin, model, prompt in facts
    }


def answer_rows(study: Study, *, chunk_size: int = 5000, include_removed: bool = False) -> Iterator[dict]:
    """Every read of the study, as dicts keyed by WRITTEN_COLUMNS, with constant memory."""
    names = reader_pseudonyms(study, include_removed=include_removed)
    practice = dict(
        Presentation.objects.filter(study=study, is_practice=True)
        .values("reader")
        .annotate(n=Count("pk"))
        .values_list("reader", "n")
    )
    images = _image_facts(study)
    answers = (
        Answer.objects.filter(presentation__study=study, presentation__is_practice=False)
        .order_by("presentation__reader", "presentation__position")
        .values_list(
            "presentation__reader",
            "presentation__image",
            "label",
            "confidence",
            "viewing_ms",
            "presentation__position",
            "presentation__is_repeat",
            "updated",
            "reasons",
            "reason_text",
            "region",
        )
    )
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # A cursor is planned for its first tenth by default (nested loops); every row is
            # wanted here, which a hash join and one sort deliver twice as fast.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        for (
            reader,
            image,
            label,
            confidence,
            ms,
            position,
            repeat,
            answered,
            reasons,
            note,
            region,
        ) in answers.iterator(chunk_size):
            if reader not in names:
                continue  # a reader taken out of the study: their answers count only when asked
            truth, model, prompt = images[image]
            yield {
                "study": study.pk,
                "reader": names[reader],
                "image": image,
                "truth": truth,
                "model": model,
                "prompt": prompt,
                "label": label,
                "confidence": confidence,
                "seconds": ms / 1000,
                "position": position - practice.get(reader, 0) + 1,
                "is_repeat": repeat,
                "answered_at": answered,
                "reasons": reasons,
                "reason_text": note,
                **region_columns(region),
            }


def study_arms(study: Study) -> list[str]:
    """The names of the study's models, arms with reads or not."""
    return list(study.arms.order_by("model__name").values_list("model__name", flat=True))


def tee(rows, builder: ReadsBuilder, *, progress=None, total: int = 0, every: int = 20000):
    """Pass rows on while the builder takes each (answers.csv line numbers: the header is line 1)."""
    count = 0
    for count, row in enumerate(rows, start=1):
        builder.add_row(count + 1, row)
        if progress is not None and count % every == 0:
            progress(count, total, "answers.csv")
        yield row
    if progress is not None and count % every:
        progress(count, count, "answers.csv")


def readme_text(
    study: Study, *, models: list[str], replicates: int, seed: int, with_metrics: bool = False
) -> str:
    """How the files were made and how to make them again from answers.csv alone."""
    declared = "".join(f" --model={shlex.quote(name)}" for name in models)
    metrics = (
        "metrics.csv holds the machine measures of each arm (from the study's latest measure job, "
        "named in its measure_job column) beside the readers' fool rate, accuracy and AUC; it is "
        "not remade from answers.csv.\n"
        if with_metrics
        else ""
    )
    return (
        f"Results of the reader study {study.title!r} (id {study.pk}), status {study.status}.\n"
        "Files: answers.csv (one row per read), summary.csv, cohen_kappa.csv, arm_comparisons.csv (the "
        "difference of the reader-averaged AUCs of each pair of arms, with its MRMC variance and test), "
        "one imrmc_<model>.csv per arm and imrmc_all.csv (every arm as a modality: the input of the "
        "FDA's iMRMC program that gives the MRMC figures); reasons.csv (how often each reason was "
        "given, per arm, on images called fake) and "
        "regions.csv (one row per marked region) where readers gave them; the columns are described "
        "in the spec of the analysis (analysis.md) and docs/analysis.md; sessions.csv (each reader's "
        "reading sessions: start, last answer, images, viewing time, screen, display check) where "
        "sessions were recorded, from the database and not remade from answers.csv.\n"
        f"{metrics}"
        f"Bootstrap: B = {replicates}, seed = {seed}.\n"
        f"To recompute every file but answers.csv{' and metrics.csv' if with_metrics else ''} "
        "from answers.csv alone (no database):\n"
        f"  python -m analysis answers.csv --out DIR --bootstrap {replicates} --seed {seed}{declared}\n"
        "(or: python manage.py analyze_csv with the same arguments).\n"
    )


# sessions.csv: one row per reading session of a reader in the study (README, "Reading sessions").
SESSION_COLUMNS = [
    "study",
    "reader",
    "session",
    "started",
    "last_answer",
    "answers",
    "viewing_seconds",
    "minutes",
    "screen_width",
    "screen_height",
    "pixel_ratio",
    "display_check",
]


def sessions_text(study: Study, *, include_removed: bool = False) -> str | None:
    """sessions.csv, from the database (not remade from answers.csv); None when no session began."""
    names = reader_pseudonyms(study, include_removed=include_removed)
    sessions = [s for s in ReadingSession.objects.filter(study=study) if s.reader_id in names]
    if not sessions:
        return None
    sessions.sort(key=lambda s: (names[s.reader_id], s.number))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SESSION_COLUMNS)
    for s in sessions:
        row = [
            study.pk,
            names[s.reader_id],
            s.number,
            s.started.isoformat(),
            s.last_seen.isoformat(),
            s.answers,
            s.viewing_ms / 1000,
            (s.last_seen - s.started).total_seconds() / 60,
            s.screen_width,
            s.screen_height,
            s.pixel_ratio,
            s.display_check,
        ]
        writer.writerow([cell(value) for value in row])
    return buffer.getvalue()


def metrics_text(study: Study, summary) -> str | None:
    """metrics.csv, from the study's latest finished measure job; None when it has none."""
    from generation.measure_jobs import latest_study_measures

    from .measures import metric_rows

    job = latest_study_measures(study)
    return None if job is None else metrics_csv(metric_rows(job, summary))


def _result_texts(
    study: Study, reads, *, replicates: int, seed: int, progress=None, include_removed: bool = False
) -> dict[str, str]:
    """Every file but answers.csv, from the reads that answers.csv holds, metrics.csv from the
    latest measure job, and the README."""
    models = study_arms(study)
    summary = summarize(reads, models=models, replicates=replicates, seed=seed, progress=progress)
    files = result_files(reads, summary)
    metrics = metrics_text(study, summary)
    if metrics is not None:
        files["metrics.csv"] = metrics
    sessions = sessions_text(study, include_removed=include_removed)
    if sessions is not None:
        files["sessions.csv"] = sessions
    files["README.txt"] = readme_text(
        study, models=models, replicates=replicates, seed=seed, with_metrics=metrics is not None
    )
    return files


def export_to_folder(
    study: Study,
    out: Path,
    *,
    replicates=DEFAULT_REPLICATES,
    seed=DEFAULT_SEED,
    progress=None,
    include_removed: bool = False,
):
    """Write answers.csv and every result file into `out`; the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builder = ReadsBuilder()
    total = Answer.objects.filter(presentation__study=study, presentation__is_practice=False).count()
    rows = tee(answer_rows(study, include_removed=include_removed), builder, progress=progress, total=total)
    answers = out / "answers.csv"
    with open(answers, "w", encoding="utf-8", newline="") as handle:
        for chunk in answers_csv_chunks(rows):
            handle.write(chunk)
    written = [answers]
    files = _result_texts(
        study,
        builder.build(),
        replicates=replicates,
        seed=seed,
        progress=progress,
        include_removed=include_removed,
    )
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


class _Sink:
    """What a streamed zip is written into: the bytes since the last drain, and the offset so far."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def results_zip_stream(
    study: Study, *, replicates=DEFAULT_REPLICATES, seed=DEFAULT_SEED, include_removed: bool = False
) -> Iterator[bytes]:
    """A zip of every file, streamed: answers.csv leaves as it is read from the database."""
    sink = _Sink()
    builder = ReadsBuilder()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        rows = answer_rows(study, include_removed=include_removed)
        with archive.open("answers.csv", "w", force_zip64=True) as entry:
            for chunk in answers_csv_chunks(tee(rows, builder)):
                entry.write(chunk.encode("utf-8"))
                yield sink.drain()
        files = _result_texts(
            study, builder.build(), replicates=replicates, seed=seed, include_removed=include_removed
        )
        for name, text in files.items():
            archive.writestr(name, text)
            yield sink.drain()
    yield sink.drain()
