"""Checking a diffusers pipeline folder before it is registered, without loading its weights.

Only allowlisted pipeline classes, only components from diffusers and transformers
(never custom or remote code), every component present, weights in safetensors or
in .bin files that load with `weights_only=True`, and channel counts that fit
together. A model that cannot work is refused with the reason.
"""

import json
import pickle
import secrets
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# The pipelines we know how to call, and whether they take a text prompt.
ALLOWED_PIPELINES = {
    "DDPMPipeline": False,
    "DDIMPipeline": False,
    "LDMPipeline": False,
    "LDMTextToImagePipeline": True,
    "StableDiffusionPipeline": True,
    "StableDiffusionXLPipeline": True,
    "FluxPipeline": True,
    "Kandinsky3Pipeline": True,
}
LORA_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "FluxPipeline"}
NON_WEIGHT_COMPONENTS = ("Tokenizer", "Scheduler", "FeatureExtractor", "ImageProcessor", "Processor")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".pkl")
MAX_ZIP_BYTES = 100 * 2**30


class ModelRefused(Exception):
    """A pipeline that cannot be registered; the message says why."""


@dataclass
class PipelineInfo:
    pipeline_class: str
    text_conditioned: bool
    native_size: int
    components: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"{what} is not readable JSON ({exc})") from None


def _library_allowed(library: str) -> bool:
    if library in ("diffusers", "transformers"):
        return True
    # Components such as ["stable_diffusion", "StableDiffusionSafetyChecker"] name a
    # module of diffusers' own pipelines: still diffusers code, not the model's.
    import diffusers.pipelines

    return library.isidentifier() and hasattr(diffusers.pipelines, library)


def inspect_pipeline(path: str | Path) -> PipelineInfo:
    folder = Path(path)
    if folder.is_file():
        if folder.suffix.lower() in (".ckpt", ".safetensors", ".pt", ".pth"):
            raise ModelRefused(
                f"{folder.name} is a single-file checkpoint: convert it to a diffusers folder "
                "(pipeline.save_pretrained(..., safe_serialization=True)) and register the folder"
            )
        raise ModelRefused(f"{folder} is a file, not a pipeline folder or a .zip of one")
    if not folder.is_dir():
        raise ModelRefused(f"no such folder: {folder}")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelRefused(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder "
            "(save one with pipeline.save_pretrained)"
        )
    index = _read_json(index_path, "model_index.json")
    cls = index.get("_class_name")
    if not isinstance(cls, str) or cls not in ALLOWED_PIPELINES:
        raise ModelRefused(
            f"pipeline class {cls!r} is not supported; supported: {', '.join(sorted(ALLOWED_PIPELINES))}"
        )
    components: dict[str, str] = {}
    configs: dict[str, dict] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, component_cls = spec
        if library is None or component_cls is None:
            continue  # an optional component left out on purpose (e.g. no safety checker)
        if not isinstance(library, str) or not _library_allowed(library):
            raise ModelRefused(
                f"component {name!r} comes from {library!r}: only diffusers and transformers components "
                "are loaded, never custom code"
            )
        sub = folder / name
        if not sub.is_dir():
            raise ModelRefused(f"component {name!r} ({component_cls}) is missing: there is no folder {name}/")
        components[name] = component_cls
        if component_cls.endswith(NON_WEIGHT_COMPONENTS):
            if not any(sub.iterdir()):
                raise ModelRefused(f"component {name!r} ({component_cls}) is an empty folder")
            continue
        config = sub / "config.json"
        if not config.is_file():
            raise ModelRefused(f"component {name!r} ({component_cls}) has no config.json")
        configs[name] = _read_json(config, f"{name}/config.json")
        _check_weights(name, sub)
    _check_channels(cls, configs)
    return PipelineInfo(
        pipeline_class=cls,
        text_conditioned=ALLOWED_PIPELINES[cls],
        native_size=_native_size(cls, configs),
        components=components,
    )


def _check_weights(name: str, sub: Path) -> None:
    safetensors = sorted(sub.glob("*.safetensors"))
    if safetensors:
        from safetensors import safe_open

        for weights in safetensors:
            try:
                with safe_open(str(weights), framework="pt") as f:
                    f.keys()  # reads the header only
            except Exception as exc:
                raise ModelRefused(
                    f"{name}/{weights.name} is not a readable safetensors file ({exc})"
                ) from None
        return
    bins = sorted(sub.glob("*.bin"))
    if bins:
        import torch

        for weights in bins:
            try:
                # weights_only refuses pickles that would run code; mmap avoids reading it all.
                torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
                raise ModelRefused(
                    f"{name}/{weights.name} is a pickle that does not load as plain tensors "
                    f"({str(exc).splitlines()[0][:160]}): convert it to safetensors"
                ) from None
        return
    pickles = [p.name for p in sub.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ModelRefused(
            f"component {name!r} has only pickle checkpoints ({', '.join(pickles)}), which can run code "
            "when loaded: save it with safe_serialization=True"
        )
    raise ModelRefused(f"component {name!r} has no weights (no .safetensors or .bin file)")


def _check_channels(cls: str, configs: dict[str, dict]) -> None:
    unet = configs.get("unet")
    autoencoder = configs.get("vae") or configs.get("vqvae") or configs.get("movq")
    if unet and autoencoder and "latent_channels" in autoencoder and "in_channels" in unet:
        if unet["in_channels"] != autoencoder["latent_channels"]:
            raise ModelRefused(
                f"the UNet takes {unet['in_channels']} input channels but the autoencoder makes "
                f"{autoencoder['latent_channels']}-channel latents (an inpainting or mismatched model?)"
            )
    if cls in ("DDPMPipeline", "DDIMPipeline") and unet:
        if unet.get("in_channels") not in (1, 3):
            raise ModelRefused(
                f"a pixel-space {cls} must make 1 (grey) or 3 (RGB) channels; its UNet takes "
                f"{unet.get('in_channels')}"
            )
    encoder = configs.get("text_encoder")
    if unet and encoder and unet.get("cross_attention_dim") and cls == "StableDiffusionPipeline":
        width = encoder.get("hidden_size") or encoder.get("d_model")
        if width and width != unet["cross_attention_dim"]:
            raise ModelRefused(
                f"the text encoder gives {width}-wide embeddings but the UNet attends to "
                f"{unet['cross_attention_dim']}"
            )


# Pipelines whose denoiser config names no sample size, and the side they make by default.
DEFAULT_SIZES = {"FluxPipeline": 1024, "Kandinsky3Pipeline": 1024}


def _native_size(cls: str, configs: dict[str, dict]) -> int:
    denoiser = configs.get("unet") or configs.get("transformer") or {}
    sample = denoiser.get("sample_size")
    autoencoder = configs.get("vae") or configs.get("vqvae") or configs.get("movq")
    if isinstance(sample, list):
        sample = sample[0]
    if not sample or cls in DEFAULT_SIZES:
        return DEFAULT_SIZES.get(cls, 512)
    if autoencoder and "block_out_channels" in autoencoder:
        return int(sample) * 2 ** (len(autoencoder["block_out_channels"]) - 1)
    return int(sample)


def inspect_lora(path: str | Path, pipeline_class: str) -> Path:
    """The LoRA weights file of an adapter folder or file, checked without loading it."""
    if pipeline_class not in LORA_PIPELINES:
        raise ModelRefused(f"LoRA adapters are supported for {', '.join(sorted(LORA_PIPELINES))} only")
    given = Path(path)
    weights = given / "pytorch_lora_weights.safetensors" if given.is_dir() else given
    if not weights.is_file():
        raise ModelRefused(f"no LoRA adapter at {given} (expected pytorch_lora_weights.safetensors)")
    if weights.suffix != ".safetensors":
        raise ModelRefused(f"the LoRA adapter {weights.name} must be a .safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:
        raise ModelRefused(f"{weights.name} is not a readable safetensors file ({exc})") from None
    if not any("lora" in key.lower() for key in keys):
        raise ModelRefused(f"{weights.name} holds no LoRA weights (no key names a lora layer)")
    return weights


def unpack_zip(archive: Path, into: Path) -> Path:
    """Unpack a .zip of a pipeline folder safely; return the folder with model_index.json."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelRefused(f"{archive.name} is not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise ModelRefused(f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 2**30} GB")
        target = into / f"{archive.stem}-{secrets.token_hex(4)}"
        for member in members:
            name = Path(member.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ModelRefused(f"{archive.name} has a member outside its folder: {member.filename!r}")
        target.mkdir(parents=True)
        try:
            zf.extractall(target)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise ModelRefused(f"{archive.name} could not be unpacked ({exc})") from None
    indexes = sorted(target.rglob("model_index.json"), key=lambda p: len(p.parts))
    if not indexes:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelRefused(
            f"{archive.name} holds no model_index.json: not a zip of a diffusers pipeline folder"
        )
    return indexes[0].parent
