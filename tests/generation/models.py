"""Tiny pipelines built once per test session, copied into each test that changes them."""

import functools
import shutil
import tempfile
from pathlib import Path

from generation import tiny

_root = Path(tempfile.mkdtemp(prefix="tiny-pipelines-"))


@functools.cache
def built(kind: str) -> Path:
    """A tiny pipeline folder of this kind (see generation.tiny.BUILDERS), built once."""
    return tiny.BUILDERS[kind](_root / kind)


@functools.cache
def lora() -> Path:
    return tiny.build_lora(built("sd-clip"), _root / "lora")


def copy_of(kind: str, into: Path) -> Path:
    """A private copy to break on purpose."""
    target = into / kind
    shutil.copytree(built(kind), target)
    return target
