"""Importing real radiographs from files, folders and zips into an image set.

One bad file never stops the others: each file ends as imported, duplicate (same
bytes already in the set) or refused with the reason, and the caller hears of each
as it happens. Zips are read one member at a time, each capped at the size of the
largest radiograph, so memory stays bounded whatever the archive.
"""

import csv
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.storage import local_copies, storage_delete_tree

from .images import file_write, files_delete, image_build, sha256
from .imaging.decode import MAX_FILE_BYTES, ImageRefused, decode
from .models import Image, ImageSet, ImportJob, ImportResult

JUNK_NAMES = {"Thumbs.db", "desktop.ini"}
# Radiographs deflate a few times at most (PNG and JPEG not at all); a member that
# inflates a hundredfold is nearly all one byte value: a decompression bomb, or an
# image so blank that it would be refused anyway. Small members cost little either way.
MAX_ZIP_RATIO = 100
RATIO_CHECKED_BYTES = 8 * 2**20
READ_CHUNK = 2**20

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


def _zip_member_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        if info.flag_bits & 0x1:
            raise ImageRefused("encrypted zip member: unpack it first")
        _check_member_size(info)
        try:
            with zf.open(info) as member:
                # In chunks: one read of the whole member holds the packed bytes, zlib's
                # blocks and their copy at once (three times the member). zipfile stops at
                # the size the header declares, which was checked; the cap stands anyway.
                chunks, size = [], 0
                while size <= MAX_FILE_BYTES and (chunk := member.read(READ_CHUNK)):
                    chunks.append(chunk)
                    size += len(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as exc:
            raise ImageRefused(f"damaged zip member ({exc})") from None
        if size > MAX_FILE_BYTES:
            raise ImageRefused("file too large once unpacked")
        return b"".join(chunks)

    return read


def _check_member_size(info: zipfile.ZipInfo) -> None:
    """Refuse, before inflating a byte, a member larger than a radiograph or than its packing allows."""
    unpacked, packed = info.file_size, max(info.compress_size, 1)
    if unpacked > MAX_FILE_BYTES:
        raise ImageRefused(
            f"file too large ({unpacked / 2**20:.0f} MB unpacked; the limit is {MAX_FILE_BYTES // 2**20} MB)"
        )
    if unpacked > RATIO_CHECKED_BYTES and unpacked > MAX_ZIP_RATIO * packed:
        raise ImageRefused(
            f"unpacks {unpacked // packed:,} times larger than it is packed ({unpacked / 2**20:.0f} MB "
            f"from {packed / 2**20:.1f} MB; radiographs pack at most {MAX_ZIP_RATIO} times smaller): "
            "a decompression bomb, or an image with nothing in it"
        )


def _outside_name(name: str) -> str:
    """Why a member's name points outside the archive's folder (empty if it does not)."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", name):
        return "an absolute path as its name: a zip of a folder names its files relative to it"
    if ".." in re.split(r"[\\/]", name):
        return "'..' in its name, which points outside the archive's folder"
    return ""


def _zip_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Members to import or to refuse by name: junk is skipped, a name reaching outside never is."""
    return [
        i
        for i in zf.infolist()
        if not i.is_dir() and (_outside_name(i.filename) or not _is_junk(Path(i.filename)))
    ]


def _zip_sources(archive: Path, label: str) -> Iterator[Source]:
    """The members of a zip, opened once; each is read only when its turn comes."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Unreadable(f"not a readable zip file ({exc})") from None
    with zf:
        for info in _zip_members(zf):
            name = f"{label}/{info.filename}"
            if outside := _outside_name(info.filename):
                yield Source(name, _refuse(f"a zip member with {outside}"))
            elif Path(info.filename).suffix.lower() == ".zip":
                yield Source(name, _refuse("a zip inside a zip: unpack it first"))
            else:
                yield Source(name, _zip_member_reader(zf, info))


def _refuse(reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ImageRefused(reason)

    return read


LINK_REFUSAL = (
    "a symbolic link: only files inside the folder are imported (copy the file itself into the folder)"
)


def _files(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str, str]]:
    """(path, label, why it is refused or ""): a folder's files, recursively, and the other paths given."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            # A link inside the folder may lead anywhere on the server (rglob does not follow
            # linked folders, but `is_file` would follow a linked file): refused by name.
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if _is_junk(relative):
                    continue
                if child.is_symlink():
                    yield child, f"{path.name}/{relative}", LINK_REFUSAL
                elif child.is_file():
                    yield child, f"{path.name}/{relative}", ""
        else:
            yield path, str(given), ""


def sources_from_paths(
    paths: Iterable[str | Path], labels: dict[Path, str] | None = None
) -> Iterator[Source]:
    """Every importable file under the given files, folders (recursively) and zips, lazily.

    `labels` names files as the researcher knows them (admin uploads are stored
    under index names).
    """
    for path, label, refusal in _files(paths):
        label = (labels or {}).get(path, label)
        if refusal:
            yield Source(label, _refuse(refusal))
        elif not path.exists():
            yield Source(label, _refuse("no such file or folder"))
        else:
            yield from _file_sources(path, label)


def count_sources(paths: Iterable[str | Path]) -> int:
    """How many sources `sources_from_paths` will give, without reading any file."""
    total = 0
    for path, _, refusal in _files(paths):
        if not refusal and path.suffix.lower() == ".zip" and path.is_file():
            try:
                with zipfile.ZipFile(path) as zf:
                    total += len(_zip_members(zf))
                continue
            except (zipfile.BadZipFile, OSError):
                pass
        total += 1
    return total


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
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the findings CSV ({exc})") from None
    return parse_findings(data, where=str(path))


def parse_findings(data: bytes, *, where: str) -> dict[str, str]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
        missing = [c for c in ("file", "finding") if c not in columns]
        if missing:
            raise ValueError(
                f"{where}: the header must name the columns 'file' and 'finding' "
                f"(missing: {', '.join(missing)})"
            )
        findings = {}
        for row in reader:
            name = (row.get(columns["file"]) or "").strip()
            if not name:
                raise ValueError(f"{where}, line {reader.line_num}: the 'file' column is empty")
            findings[name] = (row.get(columns["finding"]) or "").strip()
        return findings
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{where}: cannot read the findings CSV ({exc})") from None


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
    try:
        image = image_build(
            decoded=decoded,
            origin=Image.Origin.REAL,
            image_set=image_set,
            source_sha256=digest,
            source_name=source.name[:500],
            finding=finding[:500],
        )
    except ValueError as exc:  # the normaliser's own checks: still this file's problem only
        return Outcome(source.name, Status.REFUSED, f"cannot be normalised ({exc})")
    try:
        if settings.KEEP_ORIGINALS:
            file_write(image.original, data)
        with transaction.atomic():
            image.save()
    except IntegrityError:
        # Imported by someone else in the meantime: theirs stands, ours goes.
        files_delete(image)
        existing = _same_file(image_set, digest)
        return Outcome(source.name, Status.DUPLICATE, f"same file as {existing.source_name}", existing)
    except BaseException:
        # The original could not be written (a full disk) or the row saved: the reader
        # file written a moment ago must not stay behind as an orphan.
        files_delete(image)
        raise
    note = ""
    if min(decoded.width, decoded.height) < image.size:
        note = (
            f"enlarged from {min(decoded.width, decoded.height)} to {image.size} pixels: it may look softer "
            "than images that were not (the blinding audit measures sharpness)"
        )
    return Outcome(source.name, Status.IMPORTED, note, image=image)


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


MANIFEST = "manifest.json"


def _stored_bytes(storage, name: str) -> bytes:
    size = storage.size(name)
    if size > MAX_FILE_BYTES:
        raise ImageRefused(
            f"file too large ({size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB)"
        )
    with storage.open(name, "rb") as f:
        return f.read()


def _stored_sources(storage, labels: dict[str, str], zips: dict[str, Path]) -> Iterator[Source]:
    """An upload's stored files: zips from their local copies, others read when their turn comes."""
    for name, label in labels.items():
        if name in zips:
            yield from _file_sources(zips[name], label)
        else:
            yield Source(label, lambda name=name: _stored_bytes(storage, name))


def import_job_run(*, job_id: int) -> None:
    """Import an uploaded job's files, recording each result; safe to run twice.

    The upload is read from the storage (config/storage.py), so the worker may be on
    any host; zips are fetched to a temporary local file first (zipfile seeks).
    """
    job = ImportJob.objects.select_related("image_set").get(pk=job_id)
    if job.status in (ImportJob.Status.DONE, ImportJob.Status.FAILED):
        return
    storage, base = default_storage, job.upload_dir
    try:
        with storage.open(f"{base}/{MANIFEST}", "rb") as f:
            manifest = json.loads(f.read())
        findings_name = f"{base}/findings.csv"
        findings = {}
        if storage.exists(findings_name):
            with storage.open(findings_name, "rb") as f:
                findings = parse_findings(f.read(), where="findings.csv")
    except (ValueError, OSError) as exc:
        _job_finish(job, ImportJob.Status.FAILED, f"The upload cannot be read: {exc}")
        return
    labels = {f"{base}/files/{stored}": name for stored, name in manifest.items()}
    done = set(job.results.values_list("name", flat=True))
    try:
        with local_copies(storage, [n for n in labels if n.lower().endswith(".zip")]) as zips:
            ImportJob.objects.filter(pk=job.pk).update(
                status=ImportJob.Status.RUNNING,
                total=count_sources(zips.values()) + len(labels) - len(zips),
                done=len(done),
            )
            todo = (s for s in _stored_sources(storage, labels, zips) if s.name[:500] not in done)
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
        imported = job.results.filter(status=ImportResult.Status.IMPORTED).count()
        message = (
            f"The import stopped after {imported} image(s): {type(exc).__name__}: {exc}. "
            "Retry it from the list of import jobs: files already done are skipped."
        )
        _job_finish(job, ImportJob.Status.FAILED, message[:2000], keep_upload=True)
        raise
    _job_finish(job, ImportJob.Status.DONE, "")


def _job_finish(job: ImportJob, status: str, error: str, *, keep_upload: bool = False) -> None:
    ImportJob.objects.filter(pk=job.pk).update(status=status, error=error, finished=timezone.now())
    if not keep_upload:
        storage_delete_tree(default_storage, job.upload_dir)


def import_jobs_retry(*, jobs) -> int:
    """Queue failed jobs whose upload is still there again; files already done are skipped."""
    from .tasks import run_import_job

    retried = 0
    for job in jobs.filter(status=ImportJob.Status.FAILED):
        if default_storage.exists(f"{job.upload_dir}/{MANIFEST}"):
            ImportJob.objects.filter(pk=job.pk).update(
                status=ImportJob.Status.QUEUED, error="", finished=None
            )
            run_import_job.delay_on_commit(job.pk)
            retried += 1
    return retried
