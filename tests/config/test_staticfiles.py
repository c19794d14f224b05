"""Production's static files: the labelling page's ES modules import each other by hashed name."""

import re

from django.core.management import call_command
from django.test import override_settings

from config.staticfiles import StaticStorage


def test_collectstatic_rewrites_the_modules_imports_to_hashed_names(tmp_path, settings):
    settings.STATIC_ROOT = tmp_path
    with override_settings(
        STORAGES={**settings.STORAGES, "staticfiles": {"BACKEND": "config.staticfiles.StaticStorage"}}
    ):
        call_command("collectstatic", "--noinput", verbosity=0)
        storage = StaticStorage()
        main = (tmp_path / storage.stored_name("js/label/main.js")).read_text()
    imported = re.findall(r'from "\./([^"]+)"', main)
    assert sorted(name.split(".")[0] for name in imported) == ["check", "keys", "machine", "server", "viewer"]
    for name in imported:
        assert re.fullmatch(r"\w+\.[0-9a-f]{12}\.js", name), name  # the hashed name
        assert (tmp_path / "js" / "label" / name).exists()
