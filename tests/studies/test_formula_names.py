"""Names that reach exported CSV cells are refused where they are entered if a spreadsheet would run them."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from generation.models import GenerativeModel
from studies.models import ImageSet, Study
from tests.generation.models import built

pytestmark = pytest.mark.django_db
HOSTILE = '=HYPERLINK("http://evil.example","open")'


def form_errors(response, field: str) -> list[str]:
    return response.context["adminform"].form.errors.get(field, [])


def test_the_register_model_command_refuses_a_name_that_starts_like_a_formula():
    with pytest.raises(CommandError, match="cannot start with '=': spreadsheets would open it as a formula"):
        call_command("register_model", "--name", HOSTILE, str(built("ddpm")), stdout=io.StringIO())
    assert not GenerativeModel.objects.exists()


def test_the_model_admin_refuses_a_name_that_starts_like_a_formula(client, researcher):
    client.force_login(researcher)
    data = {"name": "@SUM(1)", "path": str(built("ddpm")), "steps": 2, "guidance": 7.5, "size": 0}
    data |= {"lora_scale": 1.0, "dtype": "auto", "batch_size": 2}
    response = client.post("/admin/generation/generativemodel/add/", data)
    assert response.status_code == 200
    assert any("cannot start with '@'" in error for error in form_errors(response, "name"))
    assert not GenerativeModel.objects.exists()


@pytest.mark.parametrize(("url", "field"), [("studies/imageset", "name"), ("studies/study", "title")])
def test_image_sets_and_studies_refuse_names_that_start_like_a_formula(client, researcher, url, field):
    client.force_login(researcher)
    response = client.post(f"/admin/{url}/add/", {field: "-2+3"})
    assert response.status_code == 200
    assert any("cannot start with '-'" in error for error in form_errors(response, field))
    assert not ImageSet.objects.exists() and not Study.objects.exists()


def test_import_images_refuses_to_create_a_set_named_like_a_formula(tmp_path):
    with pytest.raises(CommandError, match="An image set's name cannot start with a tab"):
        call_command("import_images", "--set", "\t=1", str(tmp_path), stdout=io.StringIO())
    assert not ImageSet.objects.exists()
