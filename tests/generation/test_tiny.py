"""The tiny pipelines reload from disk alone, generate, and give a seed the same image alone or in a batch."""

import functools
import json
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the Hugging Face hub

from diffusers import DiffusionPipeline  # noqa: E402

from generation.tiny import (  # noqa: E402
    BUILDERS,
    CALL_STYLE,
    bert_tokenizer,
    build_lora,
    build_stable_diffusion,
    clip_tokenizer,
    t5_tokenizer,
)

EXPECTED = {  # kind: (pipeline class, channels)
    "ddpm": ("DDPMPipeline", 1),
    "ddim": ("DDIMPipeline", 1),
    "ddpm-rgb": ("DDPMPipeline", 3),
    "sd-clip": ("StableDiffusionPipeline", 3),
    "sd-bert": ("StableDiffusionPipeline", 3),
    "sdxl": ("StableDiffusionXLPipeline", 3),
    "flux": ("FluxPipeline", 3),
    "kandinsky3": ("Kandinsky3Pipeline", 3),
    "ldm": ("LDMPipeline", 3),
    "ldm-text2img": ("LDMTextToImagePipeline", 3),
}
TEXT_KINDS = [kind for kind, (name, _) in EXPECTED.items() if CALL_STYLE[name] == "text"]
SIZE = 32
PROMPTS = [
    "chest x-ray, cardiomegaly",
    "Normal frontal chest radiograph: no pleural effusion, no pneumothorax, support devices absent.",
    "small left lung nodule",
    "PA view",
]
NEGATIVE = ["blurry", "", "low quality, noisy, cropped, with text and annotations all over it", "text"]
# DDIM draws step noise from the generators only when eta > 0; Flux reads negative prompts only with true CFG.
EXTRA = {"DDIMPipeline": {"eta": 1.0}, "FluxPipeline": {"true_cfg_scale": 2.0}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread: on a busy CPU, OpenMP's sync costs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """Each kind is built once per session."""
    return functools.cache(lambda kind: BUILDERS[kind](tmp_path_factory.mktemp(kind)))


@pytest.fixture(scope="session")
def load(build):
    """Each kind is loaded once per session; tests that change a pipeline load their own."""

    @functools.cache
    def load(kind):
        pipe = DiffusionPipeline.from_pretrained(build(kind), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


def generate(pipe, seeds, prompts=None, negative=None, **kwargs):
    """Call a pipeline the way CALL_STYLE says, with one generator per image."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    name = type(pipe).__name__
    kwargs = {"num_inference_steps": 2, "output_type": "np", **EXTRA.get(name, {}), **kwargs}
    if CALL_STYLE[name] == "unconditional":
        return pipe(batch_size=len(seeds), generator=generators, **kwargs).images
    if negative is not None and name != "LDMTextToImagePipeline":
        kwargs["negative_prompt"] = negative
    prompts = prompts or [PROMPTS[0]] * len(seeds)
    kwargs |= {"guidance_scale": 5.0, "height": SIZE, "width": SIZE}
    return pipe(prompt=prompts, generator=generators, **kwargs).images


def test_every_kind_is_built_and_every_class_has_a_call_style():
    assert set(BUILDERS) == set(EXPECTED)
    assert {name for name, _ in EXPECTED.values()} == set(CALL_STYLE)


@pytest.mark.parametrize("kind", EXPECTED)
def test_a_tiny_pipeline_reloads_and_generates(kind, load):
    pipe = load(kind)
    name, channels = EXPECTED[kind]
    assert type(pipe).__name__ == name

    images = generate(pipe, [7, 8])

    assert images.shape == (2, SIZE, SIZE, channels)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert not np.allclose(images[0], images[1]), "the seed should matter"


@pytest.mark.parametrize("kind", EXPECTED)
def test_a_seed_gives_the_same_image_alone_as_in_a_batch(kind, load):
    pipe = load(kind)

    batch = generate(pipe, [7, 8, 9, 10])
    alone = generate(pipe, [9])

    np.testing.assert_allclose(batch[2], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", [kind for kind in TEXT_KINDS if kind != "kandinsky3"])
def test_a_seed_gives_the_same_image_in_a_batch_of_other_prompts(kind, load):
    pipe = load(kind)

    batch = generate(pipe, [7, 8, 9, 10], PROMPTS, NEGATIVE)
    alone = generate(pipe, [9], PROMPTS[2:3], NEGATIVE[2:3])

    np.testing.assert_allclose(batch[2], alone[0], atol=1e-5, rtol=0)


def test_kandinsky3_cuts_a_negative_prompt_to_the_longest_prompt_in_its_batch(load):
    # Kandinsky3Pipeline cuts the T5 context to the longest prompt in the batch, plus one token, and cuts the
    # negative prompts to that length too: seed 9's long negative prompt is kept whole only in the batch.
    pipe = load("kandinsky3")

    batch = generate(pipe, [7, 8, 9, 10], PROMPTS, NEGATIVE)
    alone = generate(pipe, [9], PROMPTS[2:3], NEGATIVE[2:3])

    assert np.abs(batch[2] - alone[0]).max() > 1e-2


def test_kandinsky3_pools_each_prompt_over_the_longest_prompt_in_its_batch(load):
    # Kandinsky3Pipeline cuts the T5 context to the longest prompt in the batch (plus one) and the UNet starts
    # its attention pooling from a plain mean over that length, zeros included. The tiny UNet's norms,
    # zero-initialised, ignore the pooled prompt, so this shows where a trained one is not batch-invariant.
    pipe = load("kandinsky3")
    alone, _, alone_mask, _ = pipe.encode_prompt(PROMPTS[2:3], False, device="cpu", _cut_context=True)
    batch, _, batch_mask, _ = pipe.encode_prompt(PROMPTS, False, device="cpu", _cut_context=True)

    def pooled(embeds, mask):
        time = pipe.unet.time_embedding(pipe.unet.time_proj(torch.tensor([500])))
        return pipe.unet.add_time_condition(
            time, pipe.unet.encoder_hid_proj(embeds), ((1 - mask.float()) * -10000.0).unsqueeze(1)
        )

    assert alone.shape[1] < batch.shape[1]
    with torch.no_grad():
        assert (pooled(alone, alone_mask) - pooled(batch[2:3], batch_mask[2:3])).abs().max() > 1e-4


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_the_prompt_changes_the_image(kind, load):
    pipe = load(kind)

    first, second = (generate(pipe, [9], [prompt]) for prompt in PROMPTS[:2])

    assert np.abs(first - second).max() > 1e-3


@pytest.mark.parametrize(
    "kind, attribute, make",
    [
        ("sd-clip", "tokenizer", clip_tokenizer),
        ("sd-bert", "tokenizer", bert_tokenizer),
        ("flux", "tokenizer_2", t5_tokenizer),
        ("kandinsky3", "tokenizer", t5_tokenizer),
    ],
)
def test_a_local_tokenizer_survives_saving_and_spells_clinical_words(kind, attribute, make, load):
    tokenizer = getattr(load(kind), attribute)
    text = "Chest X-ray: cardiomegaly, small L effusion (PA view)"
    ids = tokenizer(text).input_ids

    assert ids == make()(text).input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # CLIP's unknown token is its end-of-text
    assert "cardiomegaly" in tokenizer.decode(ids, skip_special_tokens=True)


def test_a_build_is_the_same_every_time(tmp_path):
    first = build_stable_diffusion(tmp_path / "first")
    second = build_stable_diffusion(tmp_path / "second")

    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
    assert all((first / file).read_bytes() == (second / file).read_bytes() for file in files)


def test_a_lora_adapter_changes_the_image_and_follows_its_scale(build, tmp_path):
    lora = build_lora(build("sd-clip"), tmp_path / "lora", rank=4)
    assert [path.name for path in lora.iterdir()] == ["pytorch_lora_weights.safetensors"]
    pipe = DiffusionPipeline.from_pretrained(build("sd-clip"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    plain = generate(pipe, [9])

    pipe.load_lora_weights(lora)
    full = generate(pipe, [9])
    half = generate(pipe, [9], cross_attention_kwargs={"scale": 0.5})
    off = generate(pipe, [9], cross_attention_kwargs={"scale": 0.0})
    pipe.fuse_lora(lora_scale=0.5)
    fused = generate(pipe, [9])

    assert np.abs(full - plain).max() > 1e-2
    assert np.abs(half - full).max() > 1e-3
    np.testing.assert_allclose(off, plain, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fused, half, atol=1e-5, rtol=0)


def test_the_tiny_sdxl_pipeline_keeps_the_watermarker_off(build, load):
    index = json.loads((build("sdxl") / "model_index.json").read_text())

    assert index["add_watermarker"] is False
    assert load("sdxl").watermark is None
