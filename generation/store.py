"""Models in the storage, content-addressed: what every host reads them from.

A model (a pipeline folder, or a LoRA adapter) is stored once under `models/<digest>/`,
where the digest is the sha256 of its manifest: the sorted relative paths of its files,
each with its size and sha256. The manifest, in the canonical bytes that were hashed, is
written last as `models/<digest>/manifest.json`, so a model whose storing was cut short
(a killed process, a lost connection) has no manifest and is never taken as whole; the
next registration of the same files completes it. Registering the same files twice,
under any name, stores nothing new.

The registry keeps the digest (GenerativeModel.digest, .lora_digest); a worker fetches
and checks a model through its local cache (generation/model_cache.py). This module
imports no torch: the web process reads a base model's configs through it too.
"""

import hashlib
import json
import re
from pathlib import Path

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from config.storage import storage_error_text, storage_errors

MODELS = "models"
MANIFEST = "manifest.json"
FORMAT = 1
DIGEST = re.compile(r"[0-9a-f]{64}")
CHUNK = 2**20
# The single file of a stored LoRA adapter: the name diffusers' load_lora_weights looks for.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class ModelUnavailable(Exception):
    """A stored model that cannot be used: missing from the storage, half-stored, or damaged."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file of a folder by its relative path; links are followed (a Hugging Face snapshot
    is made of them), and hidden files and folders (.DS_Store, .cache/, .git/) are left out."""
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files[relative.as_posix()] = path
    return files


def manifest_build(files: dict[str, Path]) -> tuple[bytes, str]:
    """The canonical manifest of these files and its sha256: the model's identity."""
    entries = [
        {"path": name, "size": path.stat().st_size, "sha256": file_sha256(path)}
        for name, path in sorted(files.items())
    ]
    body = json.dumps({"format": FORMAT, "files": entries}, sort_keys=True, separators=(",", ":")).encode()
    return body, hashlib.sha256(body).hexdigest()


def stored_name(digest: str, relative: str = MANIFEST) -> str:
    return f"{MODELS}/{digest}/{relative}"


def model_store(files: dict[str, Path]) -> str:
    """Store these files (relative path: local file) as one model; its digest.

    Nothing is written if the model is stored already (its manifest is there). A file left
    by an earlier storing that was cut short is kept if it has the right size (the storage
    writes files whole), else written again.
    """
    body, digest = manifest_build(files)
    sizes = {entry["path"]: entry["size"] for entry in json.loads(body)["files"]}
    try:
        if default_storage.exists(stored_name(digest)):
            return digest
        for relative, path in sorted(files.items()):
            name = stored_name(digest, relative)
            if default_storage.exists(name):
                if default_storage.size(name) == sizes[relative]:
                    continue
                default_storage.delete(name)
            _save(name, path)
        _save_bytes(stored_name(digest), body)
    except storage_errors() as exc:
        raise ModelUnavailable(f"the model could not be stored ({storage_error_text(exc)})") from exc
    return digest


def _save(name: str, path: Path) -> None:
    with open(path, "rb") as f:
        saved = default_storage.save(name, File(f, name=path.name))
    if saved != name:  # never: names under a digest are taken only by the same content
        default_storage.delete(saved)
        raise ModelUnavailable(f"the storage kept {name} as {saved}")


def _save_bytes(name: str, body: bytes) -> None:
    if default_storage.exists(name):
        default_storage.delete(name)
    if default_storage.save(name, ContentFile(body)) != name:
        raise ModelUnavailable(f"the storage did not keep {name} under its name")


def manifest_read(digest: str) -> dict:
    """The stored manifest of a model, checked against its digest."""
    if not DIGEST.fullmatch(digest or ""):
        raise ModelUnavailable(f"{digest!r} is not a model digest")
    try:
        with default_storage.open(stored_name(digest), "rb") as f:
            body = f.read()
    except FileNotFoundError:
        raise ModelUnavailable(
            f"the model {digest[:12]} is not in the storage (no {stored_name(digest)}): deleted, "
            "or its storing never finished; register it again"
        ) from None
    except storage_errors() as exc:
        raise ModelUnavailable(
            f"the manifest of the model {digest[:12]} cannot be read from the storage "
            f"({storage_error_text(exc)})"
        ) from exc
    if hashlib.sha256(body).hexdigest() != digest:
        raise ModelUnavailable(f"the stored manifest of the model {digest[:12]} does not match its digest")
    manifest = json.loads(body)
    for entry in manifest["files"]:
        relative = Path(entry["path"])
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ModelUnavailable(f"the manifest of the model {digest[:12]} names {entry['path']!r}")
    return manifest


def manifest_sizes(manifest: dict) -> dict[str, int]:
    return {entry["path"]: entry["size"] for entry in manifest["files"]}


def stored_json(digest: str, relative: str) -> dict:
    """A JSON file of a stored model (a component's config.json), read without fetching the model."""
    try:
        with default_storage.open(stored_name(digest, relative), "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise ModelUnavailable(f"the stored model {digest[:12]} has no {relative}") from None
    except storage_errors() as exc:
        raise ModelUnavailable(
            f"{relative} of the model {digest[:12]} cannot be read ({storage_error_text(exc)})"
        ) from exc
