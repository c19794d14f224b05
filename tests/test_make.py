"""The Makefile's two commands, as the README gives them."""

import subprocess

from django.conf import settings


def dry_run(*args: str) -> str:
    # -n prints the commands without running them; the venv's stamp is taken as made (-o).
    result = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", *args],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_make_demo_serves_on_the_address_given():
    assert "manage.py demo --addr 127.0.0.1:8001" in dry_run("demo", "ADDR=127.0.0.1:8001")


def test_make_demo_serves_on_port_8000_by_default():
    assert "manage.py demo --addr 127.0.0.1:8000" in dry_run("demo")
