"""A worker's local copies of stored models: fetched once, checked by hash, least recently used go first.

A GPU host shares nothing with the others but the database, the broker and the storage:
before loading a model it checks it out here (`model_checkout(digest)`), which gives a
local folder. A model not yet on this host is fetched from `models/<digest>/` in the
storage (generation/store.py) into a temporary folder under MODEL_CACHE_DIR, every file
checked against the manifest's size and sha256, and then renamed into place, so a copy
cut short is never used. A stored file that does not match is a clear error
(ModelUnavailable), never a model loaded from wrong weights.

A copy in place is checked again at each checkout by its files' sizes and times as they
were when verified; a file that changed is hashed again, and a copy that no longer
matches is thrown away and fetched anew. (Hashing every file of a 30 GB model at every
load would cost as much as loading it; a change that keeps a file's size and time, such
as a failing disk's, is what the storage's copy and the hash at fetching guard against.)

The copies together are kept under MODEL_CACHE_BYTES: before a fetch, the least recently
checked-out ones are removed to make room, but never one in use. A checkout holds a shared
flock on `<digest>.lock` until released (a loaded pipeline keeps it), and eviction takes
that lock exclusively or leaves the copy. A model larger than the bound is still fetched
(the bound then holds it alone). All bookkeeping is under an exclusive flock on `.lock`,
and one process fetches a given model at a time (`<digest>.fetch`), so the processes of
one host (a prefork pool) share the cache safely; a fetch does not block the use of
models already here. Nothing here imports torch.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from config.storage import storage_error_text, storage_errors

from .store import CHUNK, DIGEST, ModelUnavailable, file_sha256, manifest_read, manifest_sizes, stored_name

logger = logging.getLogger(__name__)


@dataclass
class Checkout:
    """A model's local folder, kept from eviction until released."""

    digest: str
    path: Path
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the shared lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit, os may be gone already
            self.release()


def cache_root() -> Path:
    root = Path(settings.MODEL_CACHE_DIR)
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def model_checkout(digest: str) -> Checkout:
    """The local folder of a stored model, fetched and checked if need be; release it when done."""
    if not DIGEST.fullmatch(digest or ""):
        raise ModelUnavailable(f"{digest!r} is not a model digest")
    root = cache_root()
    with _locked(root / ".lock"):
        if checkout := _checkout_if_whole(root, digest):
            return checkout
    with _locked(root / f"{digest}.fetch"):
        with _locked(root / ".lock"):
            if checkout := _checkout_if_whole(root, digest):
                return checkout  # another process fetched it meanwhile
            manifest = manifest_read(digest)
            _evict(root, needed=sum(manifest_sizes(manifest).values()), keep=digest)
        temporary = root / f".tmp-{digest}"
        shutil.rmtree(temporary, ignore_errors=True)  # left by a process killed mid-fetch
        try:
            _fetch(digest, manifest, temporary)
            stats = {entry["path"]: _stat(temporary / entry["path"]) for entry in manifest["files"]}
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        with _locked(root / ".lock"):
            _remove(root, digest)  # a copy without its record (a process killed between the two)
            _record_path(root, digest).write_text(json.dumps({"manifest": manifest, "stats": stats}))
            os.rename(temporary, root / digest)
            return _checkout(root, digest)


def cached_digests() -> list[str]:
    """The models whole on this host, least recently used first."""
    root = cache_root()
    records = [p for p in root.glob("*.json") if DIGEST.fullmatch(p.stem) and (root / p.stem).is_dir()]
    return [p.stem for p in sorted(records, key=lambda p: p.stat().st_mtime_ns)]


def _record_path(root: Path, digest: str) -> Path:
    return root / f"{digest}.json"


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _checkout(root: Path, digest: str) -> Checkout:
    fd = os.open(root / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(_record_path(root, digest))  # the last use, for eviction
    return Checkout(digest, root / digest, fd)


def _checkout_if_whole(root: Path, digest: str) -> Checkout | None:
    folder, record_path = root / digest, _record_path(root, digest)
    if not (folder.is_dir() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
        expected = {entry["path"]: entry for entry in record["manifest"]["files"]}
        stats = record["stats"]
    except (ValueError, KeyError, TypeError):
        logger.warning("The cache's record of model %s is unreadable: fetching it again", digest[:12])
        _remove(root, digest)
        return None
    for relative, stat in stats.items():
        path = folder / relative
        try:
            if _stat(path) == stat:
                continue
            if path.stat().st_size == expected[relative]["size"] and (
                file_sha256(path) == expected[relative]["sha256"]
            ):
                continue
        except OSError:
            pass
        logger.warning("The cached copy of model %s changed (%s): fetching it again", digest[:12], relative)
        _remove(root, digest)
        return None
    return _checkout(root, digest)


def _remove(root: Path, digest: str) -> None:
    """Drop a copy. A process still using it keeps its open files (they are unlinked, not changed)."""
    _record_path(root, digest).unlink(missing_ok=True)
    if (root / digest).exists():
        trash = root / f".trash-{digest}-{secrets.token_hex(4)}"
        os.rename(root / digest, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _evict(root: Path, *, needed: int, keep: str) -> None:
    """Remove least recently used copies not in use until `needed` more bytes fit the bound."""
    bound = settings.MODEL_CACHE_BYTES
    sizes = {}
    for digest in cached_digests():
        record = json.loads(_record_path(root, digest).read_text())
        sizes[digest] = sum(manifest_sizes(record["manifest"]).values())
    total = sum(sizes.values())
    for digest in sizes:
        if total + needed <= bound:
            return
        if digest == keep:
            continue
        fd = os.open(root / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # in use by a process of this host
        try:
            _remove(root, digest)
            (root / f"{digest}.lock").unlink(missing_ok=True)
        finally:
            os.close(fd)
        total -= sizes[digest]
        logger.info("Evicted model %s from the cache (%d bytes)", digest[:12], sizes[digest])
    if total + needed > bound:
        logger.warning(
            "The model cache holds %d bytes in use; with %d more it is over MODEL_CACHE_BYTES (%d)",
            total, needed, bound,
        )  # fmt: skip


def _fetch(digest: str, manifest: dict, into: Path) -> None:
    """Copy every file of the model from the storage, checking each against the manifest."""
    for entry in manifest["files"]:
        name = stored_name(digest, entry["path"])
        target = into / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        hashed, size = hashlib.sha256(), 0
        try:
            with default_storage.open(name, "rb") as source, open(target, "wb") as out:
                while chunk := source.read(CHUNK):
                    hashed.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise ModelUnavailable(f"the stored model {digest[:12]} lacks {entry['path']} ({name})") from None
        except storage_errors() as exc:
            raise ModelUnavailable(
                f"{name} could not be fetched from the storage ({storage_error_text(exc)})"
            ) from exc
        if size != entry["size"] or hashed.hexdigest() != entry["sha256"]:
            raise ModelUnavailable(
                f"the stored file {name} does not match the model's manifest (sha256 "
                f"{hashed.hexdigest()[:12]}, expected {entry['sha256'][:12]}): the stored copy is damaged"
            )


def model_folders(model) -> tuple[list[Checkout], str, str]:
    """Checkouts, and the local folders of a registered model's pipeline and adapter ("" for none).

    A stored model comes from this host's cache (fetched and checked if need be); one
    registered before models were stored (no digest) is read from its path, which every
    worker must then reach. Release the checkouts once the model is no longer loaded.
    """
    checkouts, folders = [], []
    try:
        for digest, path in ((model.digest, model.path), (model.lora_digest, model.lora_path)):
            if digest:
                checkouts.append(model_checkout(digest))
                folders.append(str(checkouts[-1].path))
            else:
                folders.append(path)
    except BaseException:
        for checkout in checkouts:
            checkout.release()
        raise
    return checkouts, folders[0], folders[1]
