"""Importing real radiographs: files, folders, zips, duplicates, findings, bad files."""

import io
import os
import re
import tracemalloc
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from studies.images import NEUTRAL_MTIME
from studies.imaging.phantoms import phantom
from studies.imports import images_import, import_job_run, sources_from_paths
from studies.models import Image, ImageSet, ImportJob
from studies.uploads import import_job_create
from tests.conftest import stored_names
from tests.studies.files import dicom, jpeg, png16

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path):
    """A folder as researchers bring it: good files, a bad one, and OS clutter."""
    root = tmp_path / "export"
    (root / "series").mkdir(parents=True)
    (root / "series" / "cxr_001.dcm").write_bytes(dicom(tmp_path, seed=1))
    (root / "series" / "cxr_002.dcm").write_bytes(dicom(tmp_path, seed=2, monochrome1=True))
    (root / "cxr_003.png").write_bytes(png16(phantom(3, 600)))
    (root / "cxr_004.jpg").write_bytes(jpeg(phantom(4, 600)))
    (root / "notes.png").write_text("not an image at all")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def run_import(*args):
    out = io.StringIO()
    try:
        call_command("import_images", *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_one_bad_file_in_a_folder_refuses_only_that_file(folder):
    out, error = run_import("--set", "PACS export", str(folder))
    assert error is not None and error.returncode == 1
    assert "4 imported, 0 duplicate, 1 refused" in str(error)
    assert re.search(r"refused +export/notes.png: not a DICOM, PNG, JPEG or TIFF file", out)
    for name in ["series/cxr_001.dcm", "series/cxr_002.dcm", "cxr_003.png", "cxr_004.jpg"]:
        assert re.search(rf"imported +export/{re.escape(name)}\n", out)
    assert ".DS_Store" not in out
    assert ImageSet.objects.get(name="PACS export").images.count() == 4


def test_a_clean_import_exits_zero_and_says_so(folder):
    (folder / "notes.png").unlink()
    out, error = run_import("--set", "clean", str(folder))
    assert error is None
    assert "4 imported, 0 duplicate, 0 refused; the set 'clean' now has 4 images." in out


def test_the_same_file_imported_twice_is_stored_once(folder):
    (folder / "notes.png").unlink()
    run_import("--set", "twice", str(folder))
    out, error = run_import("--set", "twice", str(folder / "cxr_003.png"))
    assert error is None
    assert "duplicate" in out and "same file as export/cxr_003.png" in out
    assert Image.objects.filter(image_set__name="twice").count() == 4


def test_a_zip_is_imported_member_by_member(tmp_path, folder):
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/cxr_010.dcm", dicom(tmp_path, seed=10))
        zf.writestr("a/broken.dcm", dicom(tmp_path, seed=11)[:600])
        zf.writestr("__MACOSX/a/._cxr_010.dcm", b"resource fork")
        zf.writestr("inner.zip", b"PK\x03\x04")
    out, error = run_import("--set", "zipped", str(archive))
    assert "1 imported, 0 duplicate, 2 refused" in str(error)
    assert re.search(r"imported +.*batch.zip/a/cxr_010.dcm", out)
    assert re.search(r"refused +.*batch.zip/a/broken.dcm: ", out)
    assert "a zip inside a zip" in out
    assert "__MACOSX" not in out


def test_a_broken_zip_and_a_missing_path_are_refused_and_the_rest_imported(tmp_path, folder):
    (tmp_path / "bad.zip").write_bytes(b"this is not a zip")
    out, error = run_import(
        "--set", "mixed", str(tmp_path / "bad.zip"), str(tmp_path / "nowhere"), str(folder / "cxr_003.png")
    )
    assert "1 imported, 0 duplicate, 2 refused" in str(error)
    assert "bad.zip: not a readable zip file" in out
    assert "nowhere: no such file or folder" in out


def test_findings_from_a_csv_are_attached_by_file_name(tmp_path, folder):
    csv_path = tmp_path / "findings.csv"
    csv_path.write_text("file,finding\ncxr_001.dcm,cardiomegaly\nexport/cxr_003.png,no finding\n")
    run_import("--set", "with findings", str(folder), "--findings", str(csv_path))
    findings = dict(Image.objects.values_list("source_name", "finding"))
    assert findings["export/series/cxr_001.dcm"] == "cardiomegaly"
    assert findings["export/cxr_003.png"] == "no finding"
    assert findings["export/cxr_004.jpg"] == ""


def test_a_findings_csv_without_the_columns_is_a_clear_error(tmp_path, folder):
    csv_path = tmp_path / "findings.csv"
    csv_path.write_text("filename,label\na.dcm,x\n")
    _, error = run_import("--set", "x", str(folder), "--findings", str(csv_path))
    assert "must name the columns 'file' and 'finding' (missing: file, finding)" in str(error)
    assert not Image.objects.exists()


def test_stored_files_have_opaque_names_and_neutral_times(settings, folder, filesystem_storage):
    run_import("--set", "opaque", str(folder))
    for image in Image.objects.all():
        assert re.fullmatch(r"images/[0-9a-f]{32}\.png", image.file.name)
        assert re.fullmatch(r"originals/[0-9a-f]{32}", image.original.name)
        assert os.stat(image.file.path).st_mtime == NEUTRAL_MTIME
        assert image.original.open("rb").read()[:4] in (b"\x00\x00\x00\x00", b"\x89PNG", b"\xff\xd8\xff\xe0")
    dicom_image = Image.objects.get(source_name="export/series/cxr_002.dcm")
    assert (dicom_image.modality, dicom_image.photometric, dicom_image.source_format) == (
        "CR",
        "MONOCHROME1",
        "DICOM",
    )
    assert dicom_image.source_width == 512 and dicom_image.size == 512


def test_an_image_smaller_than_the_reader_size_is_imported_with_a_note(tmp_path):
    (tmp_path / "small.png").write_bytes(png16(phantom(5, 300)))
    out, error = run_import("--set", "small", str(tmp_path / "small.png"))
    assert error is None
    assert "(note: enlarged from 300 to 512 pixels: it may look softer" in out


def test_originals_are_not_kept_when_the_setting_says_so(settings, folder):
    settings.KEEP_ORIGINALS = False
    run_import("--set", "no originals", str(folder))
    assert not any(image.original for image in Image.objects.all())
    assert Image.objects.exists() and not stored_names("originals")


def upload(name, data):
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def test_an_admin_upload_is_imported_with_a_result_per_file(tmp_path, media_root):
    image_set = ImageSet.objects.create(name="uploaded")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("one.dcm", dicom(tmp_path, seed=21))
    job = import_job_create(
        image_set=image_set,
        files=[
            upload("chest 01 & notes.png", b"nope"),
            upload("two.png", png16(phantom(22, 600))),
            upload("batch.zip", archive.getvalue()),
            upload("empty.dcm", b""),
            upload("two.png", png16(phantom(23, 600))),
        ],
        findings=upload("f.csv", b"file,finding\ntwo.png,effusion\n"),
    )
    import_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert (job.status, job.total, job.done) == ("done", 5, 5)
    results = {r.name: (r.status, r.reason) for r in job.results.all()}
    assert results["two.png"] == ("imported", "")
    assert results["two.png (2)"] == ("imported", "")
    assert results["batch.zip/one.dcm"] == ("imported", "")
    assert results["chest 01 & notes.png"] == ("refused", results["chest 01 & notes.png"][1])
    assert "not a DICOM, PNG, JPEG or TIFF file" in results["chest 01 & notes.png"][1]
    assert results["empty.dcm"] == ("refused", "empty file (0 bytes)")
    assert Image.objects.get(source_name="two.png").finding == "effusion"
    assert stored_names("uploads") == set(), "the upload is cleared once imported"
    # Running the job again changes nothing.
    import_job_run(job_id=job.pk)
    assert job.results.count() == 5 and Image.objects.count() == 3


def test_the_admin_import_pages_work_for_staff(client, researcher, tmp_path):
    image_set = ImageSet.objects.create(name="admin set")
    client.force_login(researcher)
    assert "Import images" in client.get(f"/admin/studies/imageset/{image_set.pk}/change/").content.decode()
    form = client.get(f"/admin/studies/imageset/{image_set.pk}/import/")
    assert form.status_code == 200 and 'type="file"' in form.content.decode()
    response = client.post(
        f"/admin/studies/imageset/{image_set.pk}/import/",
        {"files": [upload("a.png", png16(phantom(31, 600)))]},
    )
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/importjob/{job.pk}/change/")
    page = client.get(response["Location"]).content.decode()
    assert "Queued" in page and "<progress" in page and 'http-equiv="refresh"' in page
    import_job_run(job_id=job.pk)
    page = client.get(response["Location"]).content.decode()
    assert "1 imported, 0 duplicate, 0 refused" in page and 'http-equiv="refresh"' not in page
    image = Image.objects.get()
    assert client.get(f"/admin/studies/image/{image.pk}/png/")["Content-Type"] == "image/png"
    original = client.get(f"/admin/studies/image/{image.pk}/original/")
    assert 'filename="a.png"' in original["Content-Disposition"]
    assert "a.png" in client.get("/admin/studies/image/").content.decode()


def test_readers_cannot_reach_the_admin_import_or_originals(client, reader, tmp_path):
    image_set = ImageSet.objects.create(name="guarded")
    client.force_login(reader)
    for url in [f"/admin/studies/imageset/{image_set.pk}/import/", "/admin/studies/image/1/original/"]:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.services
def test_a_worker_imports_an_admin_upload(client, researcher, celery_worker_process, tmp_path):
    import time

    image_set = ImageSet.objects.create(name="via worker")
    client.force_login(researcher)
    client.post(
        f"/admin/studies/imageset/{image_set.pk}/import/",
        {"files": [upload("w.dcm", dicom(tmp_path, seed=41)), upload("bad.jpg", b"\xff\xd8\xff junk")]},
    )
    job = ImportJob.objects.get()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status == "done":
            break
        time.sleep(0.2)
    assert job.status == "done"
    assert job.counts() == {"imported": 1, "duplicate": 0, "refused": 1}


def test_a_failed_import_keeps_its_upload_and_can_be_retried(client, researcher, tmp_path):
    image_set = ImageSet.objects.create(name="retry")
    job = import_job_create(image_set=image_set, files=[upload("a.png", png16(phantom(51, 600)))])
    ImportJob.objects.filter(pk=job.pk).update(status="failed", error="The import stopped: OperationalError")
    client.force_login(researcher)
    response = client.post(
        "/admin/studies/importjob/", {"action": "retry", "_selected_action": [job.pk]}, follow=True
    )
    assert "1 import(s) queued again" in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.error) == ("queued", "")
    import_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done" and job.counts()["imported"] == 1


def test_a_bad_findings_csv_fails_the_upload_with_the_reason():
    image_set = ImageSet.objects.create(name="bad csv")
    job = import_job_create(
        image_set=image_set,
        files=[upload("a.png", png16(phantom(52, 600)))],
        findings=upload("f.csv", b"name,label\n"),
    )
    import_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert "must name the columns 'file' and 'finding'" in job.error


def test_links_inside_a_folder_are_refused_by_name_and_never_followed(tmp_path, folder):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(png16(phantom(7, 600)))
    (folder / "link.png").symlink_to(elsewhere / "secret.png")
    (folder / "series" / "linked").symlink_to(elsewhere, target_is_directory=True)
    out, error = run_import("--set", "links", str(folder))
    assert re.search(r"refused +export/link.png: a symbolic link: only files inside the folder", out)
    assert re.search(r"refused +export/series/linked: a symbolic link", out)
    assert "secret" not in out and "4 imported, 0 duplicate, 3 refused" in str(error)
    assert ImageSet.objects.get(name="links").images.count() == 4


def test_zip_members_named_outside_the_archive_are_refused_each_with_a_line(tmp_path):
    archive = tmp_path / "pack.zip"
    picture = png16(phantom(8, 600))
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ["../escape.png", "/etc/abs.png", "C:/scans/drive.png", "a/..\\b.png", "ok/cxr.png"]:
            zf.writestr(name, picture if name == "ok/cxr.png" else png16(phantom(len(name), 600)))
        zf.writestr("c:colon.png", png16(phantom(40, 600)))  # a colon, not a drive
    out, error = run_import("--set", "names", str(archive))
    for name, why in [
        ("../escape.png", "'..' in its name"),
        ("/etc/abs.png", "an absolute path as its name"),
        ("C:/scans/drive.png", "an absolute path as its name"),
        ("a/..\\b.png", "'..' in its name"),
    ]:
        assert re.search(rf"refused +.*pack.zip/{re.escape(name)}: a zip member with {re.escape(why)}", out)
    assert "2 imported, 0 duplicate, 4 refused" in str(error)
    imported = ImageSet.objects.get(name="names").images.values_list("source_name", flat=True)
    assert sorted(name.rsplit("pack.zip/", 1)[1] for name in imported) == ["c:colon.png", "ok/cxr.png"]


def test_a_zip_bomb_is_refused_without_being_inflated(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scan.dcm", bytes(48 * 2**20))  # 48 MB of zeros packed into 48 kB
        zf.writestr("cxr.png", png16(phantom(9, 600)))
    image_set = ImageSet.objects.create(name="bomb")
    tracemalloc.start()
    try:
        outcomes = list(images_import(image_set=image_set, sources=sources_from_paths([archive])))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [o.status for o in outcomes] == ["refused", "imported"]
    assert "times larger than it is packed" in outcomes[0].reason
    assert "a decompression bomb" in outcomes[0].reason
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MB allocated"  # the member alone would be 48 MB


def test_too_many_files_in_one_upload_get_the_pages_own_message(settings, researcher, tmp_path):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    image_set = ImageSet.objects.create(name="many")
    client = Client(enforce_csrf_checks=True)  # as a browser: Django reads the upload in its CSRF check
    client.force_login(researcher)
    url = f"/admin/studies/imageset/{image_set.pk}/import/"
    token = client.get(url).context["csrf_token"]
    files = [upload(f"{n}.png", png16(phantom(n, 300))) for n in range(4)]
    response = client.post(url, {"files": files, "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 400
    page = response.content.decode()
    assert "At most 3 files in one upload; put them in a .zip" in page and 'type="file"' in page
    assert not ImportJob.objects.exists()
    assert client.post(url, {"files": files[:2]}).status_code == 403  # the CSRF check still stands
    response = client.post(url, {"files": files[:2], "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302 and ImportJob.objects.count() == 1
