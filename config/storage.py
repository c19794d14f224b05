"""Where the app keeps its files: Django's storage API, on a filesystem or in object storage.

Every file the app writes or reads (originals, reader images, study copies, generated
images, uploads waiting for a worker, models, checkpoints) goes through the storage
named in `STORAGES["default"]`, so web servers and workers on different hosts need to
share nothing but the database, the broker and that storage.

- The embedded default is a folder (`MEDIA_ROOT`), written atomically.
- `STORAGE_URL=s3://KEY:SECRET@host:port/bucket/prefix` (or `s3+http://` for a server
  without TLS), or the usual `AWS_*` variables, select S3-compatible object storage
  through django-storages and boto3.

Readers never get a URL of the store: images go through the app's views (see
studies.views.presentation_image).
"""

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage

# Every stored file gets this modification time (2000-01-01), so a Last-Modified
# or ETag made from it by a web server cannot date an image or tell real from generated.
NEUTRAL_MTIME = 946_684_800

FILESYSTEM = "config.storage.AtomicFileSystemStorage"
OBJECT_STORAGE = "config.storage.ObjectStorage"


class AtomicFileSystemStorage(FileSystemStorage):
    """A folder whose files appear whole or not at all, all with the same time.

    Each file is written under a hidden temporary name beside its target, flushed to
    disk, given the neutral time, then linked into place (or renamed over it where
    overwriting is allowed). A write that fails (a full disk, a killed process between
    two chunks) leaves no file under the real name, and its temporary file is removed.
    """

    def _save(self, name, content):
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        if self.directory_permissions_mode is not None:
            os.makedirs(directory, self.directory_permissions_mode, exist_ok=True)
        else:
            os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                if hasattr(content, "seek") and getattr(content, "seekable", lambda: True)():
                    content.seek(0)
                for chunk in content.chunks():
                    out.write(chunk if isinstance(chunk, bytes) else chunk.encode())
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, self.file_permissions_mode or 0o644)
            os.utime(temporary, (NEUTRAL_MTIME, NEUTRAL_MTIME))
            while True:
                try:
                    if self._allow_overwrite:
                        os.replace(temporary, full_path)
                    else:
                        os.link(temporary, full_path)  # fails if the name was taken meanwhile
                    break
                except FileExistsError:
                    name = self.get_available_name(name)
                    full_path = self.path(name)
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        if hasattr(self, "_ensure_location_group_id"):
            self._ensure_location_group_id(full_path)
        return os.path.relpath(full_path, self.location).replace("\\", "/")


@functools.cache
def _object_storage_class():
    from storages.backends.s3 import S3Storage

    class ObjectStorage(S3Storage):
        """S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph...), private.

        No ACL is set on objects (the bucket's own, private, applies), names are the
        app's random ones (never overwritten by chance, so no existence check before
        each write), and large files spool to the local disk, not to memory.
        """

        default_acl = None
        file_overwrite = True

    return ObjectStorage


def __getattr__(name):
    # django-storages (boto3) is imported only when object storage is configured.
    if name == "ObjectStorage":
        return _object_storage_class()
    raise AttributeError(name)


def storage_from_url(url: str) -> dict:
    """The `STORAGES["default"]` entry for STORAGE_URL.

    `file:///srv/media` is a folder; `s3://KEY:SECRET@host:port/bucket/prefix?region=R`
    is S3 over HTTPS and `s3+http://...` over plain HTTP (a server on a private
    network). Without a host, `s3://KEY:SECRET@/bucket` means AWS itself.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not parts.path:
            raise ImproperlyConfigured("STORAGE_URL=file:// needs a folder, e.g. file:///srv/media")
        return {"BACKEND": FILESYSTEM, "OPTIONS": {"location": unquote(parts.path)}}
    if parts.scheme not in ("s3", "s3+http", "s3+https"):
        raise ImproperlyConfigured(
            f"STORAGE_URL has the scheme {parts.scheme!r}: use file:///folder, s3://... or s3+http://..."
        )
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    if not bucket:
        raise ImproperlyConfigured("STORAGE_URL names no bucket: s3://KEY:SECRET@host:port/bucket")
    if not (parts.username and parts.password):
        raise ImproperlyConfigured("STORAGE_URL needs the access key and secret: s3://KEY:SECRET@host/bucket")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    options = {
        "bucket_name": bucket,
        "location": prefix.strip("/"),
        "access_key": unquote(parts.username),
        "secret_key": unquote(parts.password),
        "region_name": query.get("region", "us-east-1"),
    }
    if parts.hostname:
        scheme = "http" if parts.scheme == "s3+http" else "https"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        options["endpoint_url"] = f"{scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        # Other servers than AWS rarely resolve bucket.host names: name the bucket in the path.
        options["addressing_style"] = "path"
    return object_storage_options(options)


def object_storage_options(options: dict) -> dict:
    """The entry for object storage: what every deployment gets, whatever the variables said."""
    return {
        "BACKEND": OBJECT_STORAGE,
        "OPTIONS": {
            "signature_version": "s3v4",
            # A file read by a worker (an upload's zip, a model) is spooled to the local
            # disk beyond this size instead of being held in memory.
            "max_memory_size": 64 * 2**20,
            **options,
        },
    }


def storage_delete_tree(storage, prefix: str) -> None:
    """Delete every file under a folder (a key prefix in object storage); quiet if it is gone."""
    try:
        folders, files = storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        storage.delete(f"{prefix}/{name}")
    for folder in folders:
        storage_delete_tree(storage, f"{prefix}/{folder}")
    if isinstance(storage, FileSystemStorage):
        try:
            os.rmdir(storage.path(prefix))
        except OSError:
            pass


@contextlib.contextmanager
def local_copies(storage, names: list[str]):
    """Local paths of stored files, for code that needs a real file (zipfile, safetensors).

    A folder storage gives its own paths; object storage is fetched into a temporary
    folder of this host's, removed afterwards. Yields {name: path}.
    """
    if isinstance(storage, FileSystemStorage):
        yield {name: Path(storage.path(name)) for name in names}
        return
    with tempfile.TemporaryDirectory(prefix="readerstudy-fetch-") as folder:
        paths = {}
        for index, name in enumerate(names):
            path = Path(folder) / f"{index:05d}{Path(name).suffix}"
            with storage.open(name, "rb") as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out, 2**20)
            paths[name] = path
        yield paths


@functools.cache
def storage_errors() -> tuple[type[BaseException], ...]:
    """What a failing store raises: OSError from a folder, botocore's errors from object storage."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def storage_unreachable(exc: BaseException | None) -> bool:
    """Whether a storage error is the store out of reach for now (a link down, a server
    restarting or overloaded), which passes, rather than a refusal (full, denied, too large),
    which does not."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as EndpointUnreachable
    except ImportError:
        return False
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return isinstance(exc, EndpointUnreachable | HTTPClientError)


def storage_error_text(exc: BaseException) -> str:
    """A short, secret-free description of a storage failure for a user or a job."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def accel_redirect_target(file, prefix: str) -> str:
    """Where nginx's internal location finds a stored file (X-Accel-Redirect), never shown to a reader.

    A folder: the prefix and the file's name (the location's `alias` is MEDIA_ROOT).
    Object storage: the prefix and a short-lived signed path of the object, which the
    location passes to the store (`proxy_pass`); nginx hides the store's own headers
    (README, "Reader images through nginx").
    """
    if isinstance(file.storage, FileSystemStorage):
        return prefix + file.name
    signed = urlsplit(file.storage.url(file.name, expire=60))
    return prefix + signed.path.lstrip("/") + (f"?{signed.query}" if signed.query else "")


def storage_describe(entry: dict) -> str:
    """What kind of storage an entry is, without its secrets (for /healthz and logs)."""
    if entry["BACKEND"] == OBJECT_STORAGE:
        return "object storage"
    return "filesystem"
