"""Models in the storage and in each host's cache: stored once by content, fetched and checked by
hash, a changed copy fetched again, a damaged stored file a clear error, least recently used first out."""

import shutil
import threading

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generation.jobs import chunk_run, job_launch
from generation.model_cache import cached_digests, model_checkout
from generation.models import GeneratedImage, GenerationJob, GenerativeModel
from generation.services import model_register
from generation.store import ModelUnavailable, folder_files, manifest_read
from tests.conftest import stored_names, wait_until
from tests.generation.models import built, copy_of

pytestmark = pytest.mark.django_db

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def stored_files(digest: str) -> set[str]:
    return {f"models/{digest}/{name}" for name in [*folder_files(built("ddpm")), "manifest.json"]}


def damage_stored(digest: str, relative: str) -> None:
    """Flip a byte of a stored file, keeping its size."""
    name = f"models/{digest}/{relative}"
    with default_storage.open(name, "rb") as f:
        body = bytearray(f.read())
    body[len(body) // 2] ^= 0xFF
    default_storage.delete(name)
    default_storage.save(name, ContentFile(bytes(body)))


def test_a_model_is_stored_once_under_the_hash_of_its_manifest_whatever_its_name(tmp_path):
    first = model_register(name="first", path=str(copy_of("ddpm", tmp_path)), steps=2)
    assert stored_names() == stored_files(first.digest)
    manifest = manifest_read(first.digest)
    assert [entry["path"] for entry in manifest["files"]] == sorted(folder_files(built("ddpm")))
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in manifest["files"])
    second = model_register(name="second", path=str(built("ddpm")), steps=2)
    assert second.digest == first.digest and stored_names() == stored_files(first.digest)


def test_a_model_stored_halfway_is_not_taken_and_the_next_registration_completes_it(tmp_path):
    model = model_register(name="half", path=str(built("ddpm")), steps=2)
    default_storage.delete(f"models/{model.digest}/manifest.json")
    default_storage.delete(f"models/{model.digest}/{WEIGHTS}")
    with pytest.raises(ModelUnavailable, match="is not in the storage .*its storing never finished"):
        model_checkout(model.digest)
    assert model_register(name="whole", path=str(built("ddpm")), steps=2).digest == model.digest
    assert stored_names() == stored_files(model.digest)
    with model_checkout(model.digest) as checkout:
        assert (checkout.path / WEIGHTS).read_bytes() == (built("ddpm") / WEIGHTS).read_bytes()


def test_a_checkout_fetches_a_whole_checked_copy_once(model_cache_dir):
    model = model_register(name="fetched", path=str(built("ddpm")), steps=2)
    with model_checkout(model.digest) as checkout:
        assert checkout.path == model_cache_dir / model.digest
        assert {name: path.read_bytes() for name, path in folder_files(checkout.path).items()} == {
            name: path.read_bytes() for name, path in folder_files(built("ddpm")).items()
        }
    default_storage.delete(f"models/{model.digest}/{WEIGHTS}")  # the copy here needs the storage no more
    with model_checkout(model.digest) as again:
        assert (again.path / WEIGHTS).is_file()
    assert cached_digests() == [model.digest]
    assert not [p for p in model_cache_dir.iterdir() if p.name.startswith((".tmp", ".trash"))]


def test_a_changed_file_in_the_cache_is_found_by_its_hash_and_fetched_again(model_cache_dir):
    model = model_register(name="changed", path=str(built("ddpm")), steps=2)
    model_checkout(model.digest).release()
    cached = model_cache_dir / model.digest / WEIGHTS
    body = bytearray(cached.read_bytes())
    body[100] ^= 0xFF
    cached.write_bytes(bytes(body))
    with model_checkout(model.digest) as checkout:
        assert (checkout.path / WEIGHTS).read_bytes() == (built("ddpm") / WEIGHTS).read_bytes()


def test_a_damaged_stored_file_is_refused_by_its_hash_and_nothing_is_cached(model_cache_dir):
    model = model_register(name="damaged", path=str(built("ddpm")), steps=2)
    damage_stored(model.digest, WEIGHTS)
    with pytest.raises(ModelUnavailable, match=f"stored file models/{model.digest}/{WEIGHTS} does not match"):
        model_checkout(model.digest)
    assert cached_digests() == [] and not (model_cache_dir / model.digest).exists()
    assert not [p for p in model_cache_dir.iterdir() if p.is_dir()]


def test_beyond_its_bound_the_cache_drops_the_least_recently_used_copy_never_one_in_use(
    settings, tmp_path, model_cache_dir
):
    digests = []
    for kind in ("ddpm", "ddim", "ddpm-rgb"):
        digests.append(model_register(name=kind, path=str(built(kind)), steps=2).digest)
    size = sum(path.stat().st_size for path in folder_files(built("ddpm-rgb")).values())
    settings.MODEL_CACHE_BYTES = 2 * size + 1000  # two of these models, not three
    a, b, c = digests
    model_checkout(a).release()
    model_checkout(b).release()
    model_checkout(a).release()  # a is now the more recently used
    model_checkout(c).release()
    assert cached_digests() == [a, c]  # b went first
    with model_checkout(a):  # in use: kept, though the bound is then exceeded
        settings.MODEL_CACHE_BYTES = 1
        with model_checkout(b):
            assert sorted(cached_digests()) == sorted([a, b])
        model_checkout(c).release()
        assert set(cached_digests()) == {a, c}


def test_processes_checking_out_one_model_at_once_all_get_the_one_whole_copy(model_cache_dir):
    """Threads stand for the processes of a host: each takes its own file locks."""
    model = model_register(name="shared", path=str(built("sd-clip")), steps=2, prompts=["x"])
    paths, errors = [], []

    def check_out():
        try:
            with model_checkout(model.digest) as checkout:
                paths.append(checkout.path)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=check_out) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and paths == [model_cache_dir / model.digest] * 4
    assert [p.name for p in model_cache_dir.iterdir() if p.is_dir()] == [model.digest]


def test_a_model_registered_before_models_were_stored_loads_from_its_path():
    model = GenerativeModel.objects.create(
        name="legacy", path=str(built("ddpm")), pipeline_class="DDPMPipeline", native_size=32
    )
    job = job_launch(version=model.versions.create(number=1, steps=2, batch_size=2), count=2)
    chunk_run(job_id=job.pk, seeds=[0, 1])  # what a worker does with the job's one chunk
    job.refresh_from_db()
    assert (job.status, job.error) == ("done", "")
    assert GeneratedImage.objects.filter(version__model=model).count() == 2
    assert cached_digests() == []


@pytest.mark.services
def test_a_worker_with_an_empty_cache_generates_from_the_storage_alone(celery_workers, tmp_path):
    """The registering folder is gone and the worker's cache is empty: it fetches the model from
    the storage. A model whose stored weights are damaged fails its job with the reason."""
    folder = copy_of("ddpm", tmp_path)
    model = model_register(name="moved", path=str(folder), steps=2, batch_size=2)
    damaged_folder = copy_of("ddim", tmp_path)
    damaged = model_register(name="damaged", path=str(damaged_folder), steps=2)
    shutil.rmtree(folder)
    shutil.rmtree(damaged_folder)
    damage_stored(damaged.digest, WEIGHTS)
    host = tmp_path / "gpu-host"
    celery_workers.start(MODEL_CACHE_DIR=str(host / "model-cache"))
    good = job_launch(version=model.current_version, count=3)
    bad = job_launch(version=damaged.current_version, count=1)
    for job in (good, bad):
        wait_until(
            lambda job=job: GenerationJob.objects.get(pk=job.pk).status in ("done", "failed"),
            timeout=180,
            what="the job's end",
        )
    assert GenerationJob.objects.get(pk=good.pk).status == "done"
    made = GeneratedImage.objects.filter(version=model.current_version)
    assert made.count() == 3 and all(g.provenance["model_sha256"] == model.digest for g in made)
    assert (host / "model-cache" / model.digest / WEIGHTS).is_file()
    failed = GenerationJob.objects.get(pk=bad.pk)
    assert failed.status == "failed"
    stored = f"models/{damaged.digest}/{WEIGHTS}"
    assert f"ModelUnavailable: the stored file {stored} does not match the model's manifest" in failed.error
    assert not (host / "model-cache" / damaged.digest).exists()


@pytest.fixture
def model_cache_dir(settings):
    return settings.MODEL_CACHE_DIR
