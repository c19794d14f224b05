"""The storage: settings, atomic writes on a folder, a full disk, object storage that is away."""

import io
import os
import subprocess

import pytest
from botocore.config import Config
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from config.storage import NEUTRAL_MTIME, OBJECT_STORAGE, storage_from_url
from studies.imaging.phantoms import phantom
from studies.imports import Source, image_import, import_job_run, import_jobs_retry
from studies.models import Image, ImageSet, ImportJob
from studies.uploads import import_job_create
from tests.conftest import stored_names
from tests.studies.files import dicom, png16

pytestmark = pytest.mark.django_db


# --- STORAGE_URL ---------------------------------------------------------------------


def test_an_s3_url_names_the_endpoint_bucket_prefix_and_keys():
    entry = storage_from_url("s3+http://AK:s%2Fcret@store.internal:8333/studies/site-a?region=eu-west-1")
    assert entry["BACKEND"] == OBJECT_STORAGE
    options = entry["OPTIONS"]
    assert options["endpoint_url"] == "http://store.internal:8333"
    assert (options["bucket_name"], options["location"]) == ("studies", "site-a")
    assert (options["access_key"], options["secret_key"]) == ("AK", "s/cret")
    assert options["region_name"] == "eu-west-1" and options["addressing_style"] == "path"
    assert storage_from_url("s3://AK:SK@minio.example.org/b")["OPTIONS"]["endpoint_url"] == (
        "https://minio.example.org"
    )
    aws = storage_from_url("s3://AK:SK@/bucket")["OPTIONS"]
    assert "endpoint_url" not in aws and aws["bucket_name"] == "bucket"


def test_a_file_url_is_a_folder():
    entry = storage_from_url("file:///srv/media")
    assert entry["OPTIONS"]["location"] == "/srv/media"


@pytest.mark.parametrize(
    "url, problem",
    [
        ("s3://AK:SK@host:9000/", "names no bucket"),
        ("s3://host:9000/bucket", "needs the access key and secret"),
        ("ftp://host/bucket", "scheme 'ftp'"),
        ("file://", "needs a folder"),
    ],
)
def test_a_bad_storage_url_is_refused_naming_the_problem(url, problem):
    with pytest.raises(ImproperlyConfigured, match=problem):
        storage_from_url(url)


def test_settings_select_object_storage_from_the_environment(tmp_path):
    """A process started with STORAGE_URL (as a worker on another host is) uses the store."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(tmp_path),
        "STORAGE_URL": "s3+http://AK:SK@127.0.0.1:9/bucket/prefix",
    }
    code = (
        "import django; django.setup(); from django.core.files.storage import default_storage as s; "
        "print(s.bucket_name, s.location, type(s._wrapped).__name__)"
    )
    out = subprocess.run(
        [os.sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["bucket", "prefix", "ObjectStorage"]


# --- The folder storage --------------------------------------------------------------


class Interrupted(Exception):
    pass


class BreaksAfterOneChunk(ContentFile):
    """Content whose writer dies after its first chunk, as a killed process or a full disk would."""

    def chunks(self, chunk_size=None):
        yield b"x" * 1000
        raise Interrupted


def test_a_write_that_fails_half_way_leaves_nothing_on_the_folder(filesystem_storage):
    with pytest.raises(Interrupted):
        default_storage.save("images/broken.png", BreaksAfterOneChunk(b""))
    assert not default_storage.exists("images/broken.png")
    assert os.listdir(filesystem_storage / "images") == []  # no temporary file either


def test_files_on_a_folder_appear_whole_with_the_neutral_time(filesystem_storage):
    name = default_storage.save("images/a.png", ContentFile(b"pixels"))
    again = default_storage.save("images/a.png", ContentFile(b"other pixels"))
    assert name != again  # never overwritten
    path = filesystem_storage / name
    assert path.read_bytes() == b"pixels" and os.stat(path).st_mtime == NEUTRAL_MTIME
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def fill(folder, leave: int) -> None:
    """Fill the disk but for about `leave` bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_while_importing_leaves_no_orphaned_reader_image(small_disk, tmp_path, settings):
    """The reader PNG fits, the original (a 512 KB DICOM) does not: neither stays behind."""
    settings.KEEP_ORIGINALS = True
    image_set = ImageSet.objects.create(name="full")
    data = dicom(tmp_path, seed=1)
    fill(small_disk, leave=len(data) // 2)
    with pytest.raises(OSError, match="No space left"):
        image_import(image_set=image_set, source=Source("cxr.dcm", lambda: data))
    assert not Image.objects.exists()
    assert stored_names() == {"filler"}


def test_an_upload_job_stopped_by_a_full_disk_says_how_far_it_got(small_disk, settings):
    settings.KEEP_ORIGINALS = False
    image_set = ImageSet.objects.create(name="uploads")
    files = [SimpleUploadedFile(f"{i}.png", png16(phantom(i, 256))) for i in range(6)]
    job = import_job_create(image_set=image_set, files=files)
    fill(small_disk, leave=300_000)  # room for a few reader PNGs of 512 px, not for six
    with pytest.raises(OSError):
        import_job_run(job_id=job.pk)
    job.refresh_from_db()
    imported = Image.objects.filter(image_set=image_set).count()
    assert job.status == ImportJob.Status.FAILED and 0 < imported < 6
    assert job.error.startswith(f"The import stopped after {imported} image(s): OSError:")
    assert "No space left on device" in job.error and "Retry it" in job.error
    # Every stored file is an image's, an upload's (kept for the retry) or the filler.
    images = {i.file.name for i in Image.objects.all()}
    assert stored_names() - {"filler"} == images | stored_names("uploads")
    # Room again: the retry imports the rest, and clears the upload.
    os.unlink(small_disk / "filler")
    assert import_jobs_retry(jobs=ImportJob.objects.filter(pk=job.pk)) == 1
    import_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE
    assert Image.objects.filter(image_set=image_set).count() == 6 and stored_names("uploads") == set()


def test_make_phantoms_on_a_full_disk_reports_what_it_imported(small_disk, settings):
    settings.KEEP_ORIGINALS = False
    fill(small_disk, leave=300_000)
    with pytest.raises(CommandError) as stopped:
        call_command(
            "make_phantoms", "--set", "phantoms", "--count", "8", "--size", "256", stdout=io.StringIO()
        )
    imported = Image.objects.count()
    assert 0 < imported < 8
    assert str(stopped.value).startswith(
        f"The import stopped after {imported} of 8 phantoms were imported into 'phantoms': "
        "No space left on device (OSError)."
    )
    assert "Run the same command again" in str(stopped.value)


# --- Object storage that is away ------------------------------------------------------


def test_an_upload_when_the_store_is_away_says_so_and_keeps_nothing(settings, researcher, client):
    """A real connection refused (nothing listens on port 9), not a stand-in."""
    settings.STORAGE_URL = "s3+http://AK:SK@127.0.0.1:9/nowhere"
    settings.STORAGES = {**settings.STORAGES, "default": storage_from_url(settings.STORAGE_URL)}
    settings.STORAGES["default"]["OPTIONS"]["client_config"] = Config(
        retries={"max_attempts": 1}, connect_timeout=1
    )
    image_set = ImageSet.objects.create(name="away")
    client.force_login(researcher)
    response = client.post(
        f"/admin/studies/imageset/{image_set.pk}/import/",
        {"files": [SimpleUploadedFile("a.png", png16(phantom(1, 256)))]},
    )
    assert response.status_code == 503
    assert "The files could not be stored (EndpointConnectionError); nothing was imported" in (
        response.content.decode()
    )
    assert not ImportJob.objects.exists()
