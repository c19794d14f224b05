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


def stored_tensors(digest: str, relative: str) -> dict:
    """The tensors of one file of a stored model, read through this host's model cache."""
    from safetensors.torch import load_file

    from generation.model_cache import model_checkout

    with model_checkout(digest) as checkout:
        return load_file(checkout.path / relative)


def stored_checkpoint(name: str) -> tuple[dict, dict]:
    """The state and the weights of a stored training checkpoint, without touching torch's random state."""
    import torch
    from django.core.files.storage import default_storage
    from safetensors.torch import load_file

    from config.storage import local_copies

    files = [f"{name}/state.pt", f"{name}/weights.safetensors"]
    with local_copies(default_storage, files) as paths:
        return torch.load(paths[files[0]], weights_only=True), load_file(paths[files[1]])
