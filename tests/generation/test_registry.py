"""Registering models: every supported kind registers; broken or unsafe ones are refused."""

import io
import json
import pickle
import zipfile

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from generation.models import GenerativeModel, ModelVersion
from generation.registry import ModelRefused
from generation.services import model_register, model_settings_update
from generation.store import LORA_WEIGHTS
from tests.conftest import stored_names
from tests.generation.models import built, copy_of, lora

pytestmark = pytest.mark.django_db

TEXT = {"prompts": ["chest x ray"], "size": 32}
KINDS = {
    "ddpm": ("DDPMPipeline", {}),
    "ddim": ("DDIMPipeline", {}),
    "ldm": ("LDMPipeline", {}),
    "ldm-text2img": ("LDMTextToImagePipeline", TEXT),
    "sd-clip": ("StableDiffusionPipeline", TEXT),
    "sd-bert": ("StableDiffusionPipeline", TEXT),
    "sdxl": ("StableDiffusionXLPipeline", TEXT),
    "flux": ("FluxPipeline", TEXT),
    "kandinsky3": ("Kandinsky3Pipeline", {**TEXT, "size": 64}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_supported_kind_registers(kind):
    pipeline_class, settings = KINDS[kind]
    model = model_register(name=kind, path=str(built(kind)), **settings)
    assert model.pipeline_class == pipeline_class
    assert model.current_version.number == 1
    assert model.native_size > 0


def test_a_lora_adapter_registers_with_its_pipeline():
    model = model_register(name="sd+lora", path=str(built("sd-clip")), lora_path=str(lora()), prompts=["x"])
    assert model.lora_path.endswith("pytorch_lora_weights.safetensors")
    assert model.digest and model.lora_digest and model.has_lora
    adapter = f"models/{model.lora_digest}"
    assert stored_names(adapter) == {f"{adapter}/{name}" for name in ("manifest.json", LORA_WEIGHTS)}


def test_the_command_registers_with_settings_and_prints_them():
    out = io.StringIO()
    call_command(
        "register_model",
        "--name",
        "cxr-sd",
        str(built("sd-bert")),
        "--scheduler",
        "dpmpp",
        "--steps",
        "20",
        "--guidance",
        "4",
        "--size",
        "64",
        "--prompt",
        "chest x ray",
        "cardiomegaly",
        "--negative-prompt",
        "text",
        stdout=out,
    )
    version = GenerativeModel.objects.get(name="cxr-sd").current_version
    assert (version.scheduler, version.steps, version.guidance, version.size) == ("dpmpp", 20, 4.0, 64)
    assert version.prompts == ["chest x ray", "cardiomegaly"]
    assert "Registered cxr-sd: StableDiffusionPipeline, version 1" in out.getvalue()


def refusal(path, **kwargs) -> str:
    with pytest.raises(ModelRefused) as refused:
        model_register(name="broken", path=str(path), **kwargs)
    return str(refused.value)


def test_a_folder_without_model_index_is_refused(tmp_path):
    assert "has no model_index.json, so it is not a diffusers pipeline folder" in refusal(tmp_path)


def test_an_unknown_pipeline_class_is_refused(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionControlNetPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    assert "pipeline class 'StableDiffusionControlNetPipeline' is not supported" in refusal(folder)


def test_a_component_from_custom_code_is_refused(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["my_lab.models", "MyUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert "only diffusers and transformers components are loaded, never custom code" in refusal(folder)


def test_a_missing_component_is_refused(tmp_path):
    folder = copy_of("sd-clip", tmp_path)
    for path in sorted((folder / "vae").iterdir()):
        path.unlink()
    (folder / "vae").rmdir()
    assert "component 'vae' (AutoencoderKL) is missing: there is no folder vae/" in refusal(
        folder, prompts=["x"]
    )


class Payload:
    """Stands for arbitrary code in a pickle: not a plain tensor."""


def test_a_pickle_only_checkpoint_is_refused(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    torch.save({"state": Payload()}, folder / "unet" / "diffusion_pytorch_model.bin")
    message = refusal(folder)
    assert "unet/diffusion_pytorch_model.bin is a pickle that does not load as plain tensors" in message


def test_a_ckpt_only_component_is_refused(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    (folder / "unet" / "model.ckpt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert "has only pickle checkpoints (model.ckpt), which can run code" in refusal(folder)


def test_plain_tensor_bin_weights_are_accepted(tmp_path):
    folder = copy_of("ddpm", tmp_path)
    from safetensors.torch import load_file

    for weights in (folder / "unet").glob("*.safetensors"):
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()
    assert model_register(name="bin", path=str(folder)).pipeline_class == "DDPMPipeline"


def test_a_wrong_channel_count_is_refused(tmp_path):
    folder = copy_of("sd-clip", tmp_path)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["in_channels"] = 9
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    message = refusal(folder, prompts=["x"])
    assert "the UNet takes 9 input channels but the autoencoder makes 4-channel latents" in message


def test_a_text_model_without_prompts_is_refused():
    assert "a text-to-image model: it needs at least one prompt" in refusal(built("sd-clip"))


def test_a_lora_file_without_lora_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.conv_in.weight": torch.zeros(2)}, tmp_path / "pytorch_lora_weights.safetensors")
    assert "holds no LoRA weights" in refusal(built("sd-clip"), lora_path=str(tmp_path), prompts=["x"])


def test_a_zip_of_a_pipeline_registers_as_the_same_stored_model_as_its_folder(tmp_path):
    archive = tmp_path / "cxr-ddpm.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in built("ddpm").rglob("*"):
            zf.write(path, f"cxr-ddpm/{path.relative_to(built('ddpm'))}")
    model = model_register(name="zipped", path=str(archive))
    assert model.path == str(archive) and model.pipeline_class == "DDPMPipeline"
    assert model.digest == model_register(name="folder", path=str(built("ddpm"))).digest


def test_a_zip_reaching_outside_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    assert "has a member outside its folder" in refusal(archive)
    assert not (tmp_path / "outside.txt").exists()


def test_the_command_exits_non_zero_with_the_reason(tmp_path):
    with pytest.raises(CommandError, match=r"Refused .*: .* has no model_index.json"):
        call_command("register_model", "--name", "x", str(tmp_path), stdout=io.StringIO())


def test_settings_change_in_place_until_an_image_is_made_then_make_a_new_version():
    model = model_register(name="versions", path=str(built("ddpm")), steps=10)
    same = model_settings_update(model=model, steps=12)
    assert same.number == 1 and same.steps == 12
    from tests.generation.test_generate import make_images

    make_images(model, count=1)
    newer = model_settings_update(model=model, steps=20)
    assert newer.number == 2 and newer.steps == 20
    assert ModelVersion.objects.get(model=model, number=1).steps == 12
    assert model_settings_update(model=model, steps=20).number == 2  # no change, no new version
