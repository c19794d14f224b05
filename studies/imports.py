"""Importing real radiographs from files, folders and zips into an image set.

One bad file never stops the others: each file ends as imported, duplicate (same
bytes already in the set) or refused with the reason, and the caller hears of each
as it happens. Zips are read one member at a time, so memory stays flat.
"""

import csv
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .images import file_write, files_delete, image_build, sha256
from .imaging.decode import MAX_FILE_BYTES, ImageRefused, decode
from .models import Image, ImageSet, ImportJob, ImportResult

JUNK_NAMES = {"Thumbs.db", "desktop.ini"}

Status = ImportResult.Status


@dataclass(frozen=True)
class Source:
    """One file to import: its name as the researcher knows it, and how to read it."""

    name: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str
    reason: str = ""
    image: Image | None = None


class Unreadable(Exception):
    """A source that cannot even be read (a broken zip, a missing path)."""


def _is_junk(path: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts) or path.name in JUNK_NAMES


def _read_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageRefused(
            f"file too large ({size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB)"
        )
    return path.read_bytes()


def _zip_member_reader(archive: Path, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        if info.flag_bits & 0x1:
            raise ImageRefused("encrypted zip member: unpack it first")
        if info.file_size > MAX_FILE_BYTES:
            raise ImageRefused(f"file too large ({info.file_size / 2**20:.0f} MB unpacked)")
        try:
            with zipfile.ZipFile(archive) as zf, zf.open(info) as member:
                # The header's size can lie: never read more than the limit.
                data = member.read(MAX_FILE_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise ImageRefused(f"damaged zip member ({exc})") from None
        if len(data) > MAX_FILE_BYTES:
            raise ImageRefused("file too large once unpacked")
        return data

    return read


def _zip_sources(archive: Path, label: str) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise Unreadable(f"not a readable zip file ({exc})") from None
    for info in members:
        inner = Path(info.filename)
        if _is_junk(inner):
            continue
        if inner.suffix.lower() == ".zip":
            yield Source(f"{label}/{info.filename}", _refuse("a zip inside a zip: unpack it first"))
            continue
        yield Source(f"{label}/{info.filename}", _zip_member_reader(archive, info))


def _refuse(reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ImageRefused(reason)

    return read


def sources_from_paths(paths: Iterable[str | Path]) -> Iterator[Source]:
    """Every importable file under the given files, folders (recursively) and zips."""
    for given in paths:
        path = Path(given)
        if not path.exists():
            yield Source(str(given), _refuse("no such file or folder"))
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if child.is_file() and not _is_junk(relative):
                    yield from _file_sources(child, f"{path.name}/{relative}")
        else:
            yield from _file_sources(path, str(given))


def _file_sources(path: Path, label: str) -> Iterator[Source]:
    if path.suffix.lower() == ".zip":
        try:
            yield from _zip_sources(path, label)
        except Unreadable as exc:
            yield Source(label, _refuse(str(exc)))
    else:
        yield Source(label, lambda: _read_file(path))


def load_findings(path: str | Path) -> dict[str, str]:
    """A CSV with columns `file` and `finding`: file names (or paths) to finding texts."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            missing = [c for c in ("file", "finding") if c not in columns]
            if missing:
                raise ValueError(
                    f"{path}: the header must name the columns 'file' and 'finding' "
                    f"(missing: {', '.join(missing)})"
                )
            findings = {}
            for row in reader:
                name = (row.get(columns["file"]) or "").strip()
                if not name:
                    raise ValueError(f"{path}, line {reader.line_num}: the 'file' column is empty")
                findings[name] = (row.get(columns["finding"]) or "").strip()
            return findings
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the findings CSV ({exc})") from None


def finding_for(name: str, findings: dict[str, str]) -> str:
    if name in findings:
        return findings[name]
    return findings.get(Path(name).name, "")


def image_import(*, image_set: ImageSet, source: Source, finding: str = "") -> Outcome:
    """Import one file into the set. Never raises for a bad file: it is refused."""
    try:
        data = source.read()
    except ImageRefused as exc:
        return Outcome(source.name, Status.REFUSED, str(exc))
    except OSError as exc:
        return Outcome(source.name, Status.REFUSED, f"cannot read the file ({exc.strerror or exc})")
    digest = sha256(data)
    existing = _same_file(image_set, digest)
    if existing:
        return Outcome(source.name, Status.DUPLICATE, f"same file as {existing.source_name}", existing)
    try:
        decoded = decode(data)
    except ImageRefused as exc:
        return Outcome(source.name, Status.REFUSED, str(exc))
    image = image_build(
        decoded=decoded,
        origin=Image.Origin.REAL,
        image_set=image_set,
        source_sha256=digest,
        source_name=source.name[:500],
        finding=finding[:500],
    )
    if settings.KEEP_ORIGINALS:
        file_write(image.original, data)
    try:
        with transaction.atomic():
            image.save()
    except IntegrityError:
        # Imported by someone else in the meantime: theirs stands, ours goes.
        files_delete(image)
        existing = _same_file(image_set, digest)
        return Outcome(source.name, Status.DUPLICATE, f"same file as {existing.source_name}", existing)
    return Outcome(source.name, Status.IMPORTED, image=image)


def _same_file(image_set: ImageSet, digest: str) -> Image | None:
    return Image.objects.filter(image_set=image_set, source_sha256=digest, origin=Image.Origin.REAL).first()


def images_import(
    *,
    image_set: ImageSet,
    sources: Iterable[Source],
    findings: dict[str, str] | None = None,
) -> Iterator[Outcome]:
    """Import each source in turn, yielding its outcome as soon as it is known."""
    for source in sources:
        yield image_import(
            image_set=image_set, source=source, finding=finding_for(source.name, findings or {})
        )


# --- Imports uploaded in the admin, run by a worker ---------------------------------


def upload_dir(job: ImportJob) -> Path:
    return settings.MEDIA_ROOT / job.upload_dir


def import_job_run(*, job_id: int) -> None:
    """Import an uploaded job's files, recording each result; safe to run twice."""
    job = ImportJob.objects.select_related("image_set").get(pk=job_id)
    if job.status in (ImportJob.Status.DONE, ImportJob.Status.FAILED):
        return
    folder = upload_dir(job)
    findings_path = folder / "findings.csv"
    files = folder / "files"
    try:
        findings = load_findings(findings_path) if findings_path.exists() else {}
        sources = list(sources_from_paths(sorted(files.iterdir()) if files.exists() else []))
    except ValueError as exc:
        _job_finish(job, ImportJob.Status.FAILED, str(exc))
        return
    sources = [Source(_upload_label(s.name, files), s.read) for s in sources]
    done = set(job.results.values_list("name", flat=True))
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportJob.Status.RUNNING, total=len(sources), done=len(done)
    )
    todo = [s for s in sources if s.name not in done]
    try:
        for outcome in images_import(image_set=job.image_set, sources=todo, findings=findings):
            ImportResult.objects.get_or_create(
                job=job,
                name=outcome.name[:500],
                defaults={"status": outcome.status, "reason": outcome.reason, "image": outcome.image},
            )
            ImportJob.objects.filter(pk=job.pk).update(done=job.results.count())
    except Exception as exc:
        # Not a bad file (those are refused) but a broken server: say so on the job,
        # keep what was imported, and let the worker log the traceback.
        message = f"The import stopped: {type(exc).__name__}: {exc}. Retry it from the list of import jobs."
        _job_finish(job, ImportJob.Status.FAILED, message[:2000], keep_upload=True)
        raise
    _job_finish(job, ImportJob.Status.DONE, "")


def _upload_label(name: str, files: Path) -> str:
    prefix = str(files) + "/"
    return name[len(prefix) :] if name.startswith(prefix) else name


def _job_finish(job: ImportJob, status: str, error: str, *, keep_upload: bool = False) -> None:
    ImportJob.objects.filter(pk=job.pk).update(status=status, error=error, finished=timezone.now())
    if not keep_upload:
        shutil.rmtree(upload_dir(job), ignore_errors=True)


def import_jobs_retry(*, jobs) -> int:
    """Queue failed jobs whose upload is still there again; files already done are skipped."""
    from .tasks import run_import_job

    retried = 0
    for job in jobs.filter(status=ImportJob.Status.FAILED):
        if upload_dir(job).exists():
            ImportJob.objects.filter(pk=job.pk).update(
                status=ImportJob.Status.QUEUED, error="", finished=None
            )
            run_import_job.delay_on_commit(job.pk)
            retried += 1
    return retried
