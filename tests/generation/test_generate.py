"""Generating images in-process: every kind, reproducibility, prompts, idempotence, failures."""

import io
import json
from collections import Counter

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from generation.jobs import _prompt_groups, chunk_run, job_cancel, job_launch, job_retry
from generation.models import GeneratedImage, GenerationJob
from generation.pipelines import FLOAT32_ONLY, cuda_context_lost, resolve_dtype
from generation.services import model_register, model_settings_update
from studies.imaging.normalise import png_chunk_types
from tests.generation.models import built, copy_of, lora
from tests.generation.test_registry import KINDS

pytestmark = pytest.mark.django_db


def run_job(job: GenerationJob) -> GenerationJob:
    """What the workers do with a job's chunk tasks, done here in turn."""
    job.refresh_from_db()
    seeds = list(job.seeds)
    size = job.version.batch_size
    for start in range(0, len(seeds), size):
        chunk_run(job_id=job.pk, seeds=seeds[start : start + size], attempt=job.attempt)
    job.refresh_from_db()
    return job


def make_images(model, *, count: int, seed: int | None = None) -> GenerationJob:
    return run_job(job_launch(version=model.current_version, count=count, base_seed=seed))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_generates_reader_images_with_provenance(kind):
    _, settings = KINDS[kind]
    model = model_register(name=kind, path=str(built(kind)), steps=2, batch_size=2, **settings)
    assert model.current_version.output_size == (settings.get("size") or 32)
    job = make_images(model, count=3)
    assert (job.status, job.error) == ("done", "")
    made = list(GeneratedImage.objects.filter(version__model=model).select_related("image"))
    assert sorted(g.seed for g in made) == [0, 1, 2]
    for generated in made:
        png = generated.image.file.open("rb").read()
        assert png_chunk_types(png) == ["IHDR", "IDAT", "IEND"]
        assert generated.image.origin == "synthetic" and generated.image.size == 512
        provenance = generated.provenance
        assert provenance["pipeline"] == model.pipeline_class
        assert provenance["steps"] == 2 and provenance["device"] == "cpu" and provenance["dtype"] == "float32"
        assert provenance["torch"].startswith("2.") and provenance["diffusers"]
        assert provenance["scheduler"] and provenance["scheduler_config"]
        assert generated.seconds > 0 and generated.used_seed == generated.seed


def pixels_by_seed(model) -> dict[int, str]:
    return dict(GeneratedImage.objects.filter(version__model=model).values_list("seed", "image__png_sha256"))


@pytest.mark.parametrize("kind", ["ddpm", "sd-clip", "kandinsky3"])
def test_a_seed_gives_the_same_image_in_a_batch_of_1_and_of_4(kind):
    """The starting noise of an image comes from its own seed alone, so it is bit for
    bit the same in any batch. What the network then computes agrees to float
    precision: batched kernels sum in another order (about 1e-6 here), which can
    move a pixel across a rounding step of the 8-bit reader image, never more."""
    from generation import pipelines

    _, settings = KINDS[kind]
    prompts = {"prompts": ["chest x ray", "a much longer prompt about cardiomegaly"]} if settings else {}
    size = {"size": settings["size"]} if settings else {}
    in_fours = model_register(name="fours", path=str(built(kind)), steps=3, batch_size=4, **prompts, **size)
    in_ones = model_register(name="ones", path=str(built(kind)), steps=3, batch_size=1, **prompts, **size)
    loaded = pipelines.pipeline_for(in_fours.current_version)
    version = in_fours.current_version
    prompt_list = [
        version.prompts[s % len(version.prompts)] if version.prompts else "" for s in range(10, 14)
    ]
    batch = pipelines.generate(loaded, version, seeds=[10, 11, 12, 13], prompts=prompt_list)
    alone = pipelines.generate(loaded, version, seeds=[12], prompts=prompt_list[2:3])
    np.testing.assert_allclose(batch[2], alone[0], atol=1e-5, rtol=0)
    # And through the whole path, to the reader image:
    make_images(in_fours, count=4, seed=10)
    make_images(in_ones, count=1, seed=12)
    four, one = (
        reader_pixels(GeneratedImage.objects.get(version__model=m, seed=12)) for m in (in_fours, in_ones)
    )
    assert np.abs(four - one).max() <= 1
    assert (four != one).mean() < 0.01


def reader_pixels(generated) -> np.ndarray:

    with generated.image.file.open("rb") as f:
        return np.asarray(PILImage.open(f)).astype(int)


def test_a_job_spreads_its_images_evenly_over_the_prompts():
    prompts = ["normal chest", "cardiomegaly", "pleural effusion"]
    model = model_register(
        name="prompts", path=str(built("sd-bert")), steps=2, batch_size=3, prompts=prompts, size=32
    )
    make_images(model, count=6)
    assert Counter(GeneratedImage.objects.values_list("prompt", flat=True)) == {p: 2 for p in prompts}


def test_the_lora_scale_reaches_the_pipeline():
    base = model_register(name="base", path=str(built("sd-clip")), steps=2, prompts=["x"], size=32)
    adapted = model_register(
        name="lora", path=str(built("sd-clip")), lora_path=str(lora()), steps=2, prompts=["x"]
    )
    off = model_register(
        name="lora-off",
        path=str(built("sd-clip")),
        lora_path=str(lora()),
        steps=2,
        prompts=["x"],
        lora_scale=0.0,
    )
    for model in (base, adapted, off):
        make_images(model, count=1, seed=5)
    assert pixels_by_seed(adapted)[5] != pixels_by_seed(base)[5]
    assert pixels_by_seed(off)[5] == pixels_by_seed(base)[5]


def test_a_chunk_delivered_twice_neither_duplicates_nor_loses_an_image():
    model = model_register(name="twice", path=str(built("ddpm")), steps=2, batch_size=2)
    job = job_launch(version=model.current_version, count=4)
    chunk_run(job_id=job.pk, seeds=[0, 1])
    chunk_run(job_id=job.pk, seeds=[0, 1])  # redelivered after the worker died
    chunk_run(job_id=job.pk, seeds=[2, 3])
    assert sorted(GeneratedImage.objects.values_list("seed", flat=True)) == [0, 1, 2, 3]
    job.refresh_from_db()
    assert job.status == "done"


def test_a_new_job_starts_after_the_last_seed_and_reuses_nothing():
    model = model_register(name="more", path=str(built("ddpm")), steps=2, batch_size=2)
    make_images(model, count=2)
    second = make_images(model, count=2)
    assert second.base_seed == 2
    assert sorted(GeneratedImage.objects.values_list("seed", flat=True)) == [0, 1, 2, 3]


def test_two_jobs_launched_at_once_ask_for_different_seeds():
    model = model_register(name="at-once", path=str(built("ddpm")), steps=2)
    first = job_launch(version=model.current_version, count=4, base_seed=0, is_preview=True)
    second = job_launch(version=model.current_version, count=2)
    assert (first.base_seed, second.base_seed) == (0, 4)


def test_a_job_over_seeds_already_made_is_done_at_once():
    model = model_register(name="again", path=str(built("ddpm")), steps=2)
    make_images(model, count=2, seed=0)
    job = job_launch(version=model.current_version, count=2, base_seed=0)
    job.refresh_from_db()
    assert job.status == "done" and GeneratedImage.objects.count() == 2


def test_a_cancelled_job_makes_nothing_more_and_a_retry_makes_only_what_is_missing():
    model = model_register(name="cancel", path=str(built("ddpm")), steps=2, batch_size=1)
    job = job_launch(version=model.current_version, count=3)
    chunk_run(job_id=job.pk, seeds=[0])
    assert job_cancel(job=job)
    chunk_run(job_id=job.pk, seeds=[1])
    assert GeneratedImage.objects.count() == 1
    assert job_retry(job=job)
    run_job(job)
    assert sorted(GeneratedImage.objects.values_list("seed", flat=True)) == [0, 1, 2]
    assert GeneratedImage.objects.get(seed=0).job_id == job.pk


def test_an_output_that_is_not_an_image_fails_the_job_with_the_reason(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    for weights in (folder / "unet").glob("*.safetensors"):
        tensors = load_file(weights)
        tensors = {k: (v.fill_(float("nan")) if k.startswith("conv_out") else v) for k, v in tensors.items()}
        save_file(tensors, weights)
    model = model_register(name="nan", path=str(folder), steps=2)
    with pytest.raises(RuntimeError, match="NaN or infinite values in 4 tries"):
        make_images(model, count=1)
    job = GenerationJob.objects.get()
    assert job.status == "failed"
    assert "seed 0: NaN or infinite values in 4 tries" in job.error
    assert not GeneratedImage.objects.exists()


def test_every_image_points_at_the_version_that_made_it():
    model = model_register(name="versioned", path=str(built("ddpm")), steps=2)
    make_images(model, count=1)
    model_settings_update(model=model, steps=3)
    make_images(model, count=1)
    versions = sorted(GeneratedImage.objects.values_list("seed", "version__number"))
    assert versions == [(0, 1), (0, 2)]  # seed 0 again, but of the new version


def test_the_generate_command_launches_a_job():
    model_register(name="cmd", path=str(built("ddpm")), steps=2)
    out = io.StringIO()
    call_command("generate", "--model", "cmd", "--count", "5", "--seed", "100", stdout=out)
    assert "5 images of cmd v1, seeds 100..104" in out.getvalue()
    assert GenerationJob.objects.get().base_seed == 100


def test_the_generate_command_names_the_models_it_knows():
    model_register(name="known", path=str(built("ddpm")))
    with pytest.raises(Exception, match=r"No model named 'unknown' \(registered: known\)"):
        call_command("generate", "--model", "unknown", "--count", "1")


def test_the_provenance_is_json_all_the_way_down():
    model = model_register(name="json", path=str(built("sd-clip")), steps=2, prompts=["x"], size=32)
    make_images(model, count=1)
    provenance = GeneratedImage.objects.get().provenance
    assert json.loads(json.dumps(provenance)) == provenance
    assert np.isfinite(GeneratedImage.objects.get().seconds)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_generates_in_bf16_as_on_a_gpu(kind):
    """bf16, which "auto" picks on every A100/H100/H200, run on the CPU: the pipelines that
    convert their output to numpy themselves failed here (unsupported ScalarType BFloat16)."""
    _, settings = KINDS[kind]
    model = model_register(
        name=f"{kind}-bf16", path=str(built(kind)), steps=2, batch_size=2, dtype="bfloat16", **settings
    )
    job = make_images(model, count=2)
    assert (job.status, job.error) == ("done", "")
    made = list(GeneratedImage.objects.filter(version__model=model).select_related("image"))
    assert len(made) == 2
    # LDMPipeline cannot run in half precision (float32 noise into a bf16 VQ-VAE): float32 there.
    expected = "float32" if model.pipeline_class in FLOAT32_ONLY else "bfloat16"
    assert {g.provenance["dtype"] for g in made} == {expected}
    for generated in made:
        pixels = np.asarray(PILImage.open(generated.image.file.open("rb")))
        assert pixels.std() > 0  # an image, not a blank


def test_dtypes_are_chosen_for_the_device_and_the_pipeline():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float32"  # fp16 hardly runs on a CPU
    assert resolve_dtype("bfloat16", "cuda", "LDMPipeline") == "float32"
    assert resolve_dtype("float16", "cuda", "StableDiffusionPipeline") == "float16"


def test_kandinsky3_chunks_hold_seeds_of_one_prompt():
    model = model_register(
        name="k3-prompts", path=str(built("kandinsky3")), batch_size=4, size=64, prompts=["a", "b c"]
    )
    groups = _prompt_groups(model.current_version, list(range(8)))
    assert groups == [[0, 2, 4, 6], [1, 3, 5, 7]]
    sd = model_register(name="sd-prompts", path=str(built("sd-clip")), prompts=["a", "b c"])
    assert _prompt_groups(sd.current_version, list(range(8))) == [list(range(8))]


def test_only_errors_that_break_the_cuda_context_end_the_worker_process():
    broken = [
        "CUDA error: an illegal memory access was encountered",
        "CUDA error: device-side assert triggered",
        "CUDA error: unspecified launch failure",
    ]
    assert all(cuda_context_lost(RuntimeError(message)) for message in broken)
    assert not cuda_context_lost(RuntimeError("CUDA error: out of memory"))
    assert not cuda_context_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
