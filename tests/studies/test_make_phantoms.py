"""`make_phantoms`: phantom radiographs in every format, imported through the real path."""

import io

import pydicom
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from studies.models import Image, ImageSet

pytestmark = pytest.mark.django_db


def test_it_imports_png_and_both_dicom_polarities_and_says_they_are_phantoms():
    out = io.StringIO()
    call_command("make_phantoms", set_name="phantoms", count=6, size=256, stdout=out)
    assert "Phantoms (not clinical images) in 'phantoms': 6 imported" in out.getvalue()
    image_set = ImageSet.objects.get(name="phantoms")
    assert "not clinical images" in image_set.description
    kinds = sorted(Image.objects.values_list("source_format", "photometric"))
    assert kinds == [("DICOM", "MONOCHROME1")] * 2 + [("DICOM", "MONOCHROME2")] * 2 + [("PNG", "")] * 2


def test_running_it_again_adds_nothing():
    call_command("make_phantoms", set_name="again", count=3, size=256, stdout=io.StringIO())
    out = io.StringIO()
    call_command("make_phantoms", set_name="again", count=3, size=256, stdout=out)
    assert "0 imported, 3 already there" in out.getvalue()
    assert Image.objects.count() == 3


def test_it_can_only_write_the_files(tmp_path):
    call_command(
        "make_phantoms", set_name="unused", count=3, size=256, out=str(tmp_path), stdout=io.StringIO()
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["phantom_00000.png", "phantom_00001.dcm", "phantom_00002.dcm"]
    assert pydicom.dcmread(tmp_path / "phantom_00002.dcm").PhotometricInterpretation == "MONOCHROME1"
    assert not ImageSet.objects.exists()


def test_a_bad_count_is_a_clear_error():
    with pytest.raises(CommandError, match="--count must be between 1 and 100000"):
        call_command("make_phantoms", set_name="x", count=0)
