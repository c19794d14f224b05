"""Loading diffusers pipelines in a worker and calling them reproducibly.

torch and diffusers are imported inside functions: the prefork parent of a
Celery worker never imports them, so CUDA is initialised only in its children.
"""

import functools
import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

from .model_cache import model_folders

SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}
UNCONDITIONAL = {"DDPMPipeline", "DDIMPipeline", "LDMPipeline"}
# The schedulers each pipeline's denoising loop can drive ("" = its own). DDIMPipeline
# passes DDIM's eta; DDPM-style loops pass a generator but never scale the model
# input (so no Euler); FLUX's flow matching takes only its own; Kandinsky 3 passes
# a generator, which UniPC does not take.
ALL_SCHEDULERS = {"", *SCHEDULERS}
COMPATIBLE_SCHEDULERS = {
    "DDPMPipeline": {"", "ddpm", "ddim", "dpmpp"},
    "DDIMPipeline": {"", "ddim"},
    "LDMPipeline": {"", "ddpm", "ddim", "dpmpp"},
    "LDMTextToImagePipeline": {"", "ddpm", "ddim", "dpmpp", "unipc"},
    "StableDiffusionPipeline": ALL_SCHEDULERS,
    "StableDiffusionXLPipeline": ALL_SCHEDULERS,
    "Kandinsky3Pipeline": {"", "ddpm", "ddim", "dpmpp"},
    "FluxPipeline": {""},
}
NO_NEGATIVE_PROMPT = {"FluxPipeline", "LDMTextToImagePipeline"}
# These cut the text context to the longest prompt of the batch, so an image would
# depend on the other prompts in its batch: they are called once per distinct prompt.
PROMPT_LENGTH_SENSITIVE = {"Kandinsky3Pipeline"}
# These cannot run in half precision: LDMPipeline makes its starting noise in float32
# and feeds it to a bf16 or fp16 VQ-VAE. They run in float32 whatever is asked.
FLOAT32_ONLY = {"LDMPipeline"}
# Messages of CUDA errors after which the process's CUDA context is broken for good.
CUDA_CONTEXT_LOST = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "CUDA error",
)
# Where each pipeline takes the LoRA scale at call time.
LORA_SCALE_ARGUMENT = {
    "StableDiffusionPipeline": "cross_attention_kwargs",
    "StableDiffusionXLPipeline": "cross_attention_kwargs",
    "FluxPipeline": "joint_attention_kwargs",
}


class OutOfMemory(Exception):
    """The accelerator (or the host) ran out of memory for this batch."""


@dataclass
class Loaded:
    pipe: object
    device: str
    dtype: str
    scheduler_class: type  # the pipeline's own, as saved: tasks replace pipe.scheduler
    scheduler_config: dict
    key: tuple = ()
    notes: dict = field(default_factory=dict)  # what we changed on the pipeline, for provenance
    # The local copies it was loaded from (generation/model_cache.py): kept from eviction
    # while the pipeline is loaded, released when it is dropped.
    checkouts: list = field(default_factory=list)

    def release(self) -> None:
        for checkout in self.checkouts:
            checkout.release()


logger = logging.getLogger(__name__)
_cache: OrderedDict[tuple, Loaded] = OrderedDict()
_lock = threading.Lock()


def resolve_dtype(requested: str, device: str, pipeline_class: str = "") -> str:
    import torch

    if pipeline_class in FLOAT32_ONLY:
        return "float32"
    if device != "cuda":
        # bf16 runs on a CPU when asked for (the tests check the GPU's bf16 path there);
        # fp16 hardly does, and "auto" takes float32, the fast and exact choice on a CPU.
        return "bfloat16" if requested == "bfloat16" else "float32"
    if requested != "auto":
        return requested
    # Emulated bf16 (V100, T4) is slower than fp16: only a native one counts.
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


def pipeline_for(version) -> Loaded:
    """The loaded pipeline for this version's model, from a small per-process cache.

    Keyed by what loading depends on (the stored pipeline and adapter, dtype), so a new
    version that changes only steps or prompts reuses the loaded weights.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = version.model
    key = (
        model.digest or model.path,
        model.lora_digest or model.lora_path,
        resolve_dtype(version.dtype, device, model.pipeline_class),
    )
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        # Make room before loading, so memory never holds one pipeline more than the cache.
        while _cache and len(_cache) >= settings.PIPELINE_CACHE_SIZE:
            _cache.popitem(last=False)[1].release()
        if device == "cuda":
            torch.cuda.empty_cache()
        try:
            loaded = _load(model, device, key[2])
        except torch.cuda.OutOfMemoryError:
            loaded = None
        if loaded is None:
            # Out of memory while loading: drop every other pipeline and try once more
            # (outside the except block, whose traceback would hold the half-loaded weights).
            logger.warning("Out of memory loading %s: emptying the pipeline cache, trying again", model)
            for dropped in _cache.values():
                dropped.release()
            _cache.clear()
            gc.collect()
            torch.cuda.empty_cache()
            loaded = _load(model, device, key[2])
        loaded.key = key
        _cache[key] = loaded
        return loaded


def forget(loaded: Loaded) -> None:
    """Drop a pipeline whose call failed: it may be left half-changed (e.g. a LoRA scale)."""
    with _lock:
        if _cache.get(loaded.key) is loaded:
            del _cache[loaded.key]
            loaded.release()


def _load(model, device: str, dtype: str) -> Loaded:
    checkouts, folder, lora = model_folders(model)
    try:
        loaded = _load_from(model, folder, lora, device, dtype)
    except BaseException:
        for checkout in checkouts:
            checkout.release()
        raise
    loaded.checkouts = checkouts
    return loaded


def _load_from(model, folder: str, lora: str, device: str, dtype: str) -> Loaded:
    import torch
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    # Progress bars and load reports fill worker logs; failures still raise.
    for library_logging in (diffusers_logging, transformers.utils.logging):
        library_logging.disable_progress_bar()
        library_logging.set_verbosity_error()

    kwargs = {"local_files_only": True, "torch_dtype": getattr(torch, dtype)}
    notes = {}
    if model.pipeline_class == "StableDiffusionXLPipeline":
        kwargs["add_watermarker"] = False  # an invisible watermark would tell synthetic images apart
        notes["watermark"] = "disabled"
    pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
    if getattr(pipe, "watermark", None) is not None:
        pipe.watermark = None
        notes["watermark"] = "disabled"
    if lora:
        pipe.load_lora_weights(lora)
        notes["lora"] = model.lora_digest or model.lora_path
    if model.digest:
        notes["model_sha256"] = model.digest
    pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if hasattr(vae, "enable_slicing"):
        # One image at a time through the decoder: a batch that fits the denoising is not
        # thrown away for want of memory in the decode.
        vae.enable_slicing()
    if device == "cuda":
        # PyTorch's SDPA attention is diffusers' default with torch 2; channels-last
        # helps the convolutions of UNets and autoencoders on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        for name in ("unet", "vae", "vqvae", "movq"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return Loaded(
        pipe=pipe,
        device=device,
        dtype=dtype,
        scheduler_class=type(pipe.scheduler),
        scheduler_config=dict(pipe.scheduler.config),
        notes=notes,
    )


def fresh_scheduler(loaded: Loaded, name: str):
    """A new scheduler object for each task: schedulers keep state between steps."""
    import diffusers

    if not name:
        return loaded.scheduler_class.from_config(loaded.scheduler_config)
    cls_name, extra = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(loaded.scheduler_config, **extra)


def generate(loaded: Loaded, version, *, seeds: list[int], prompts: list[str], on_step=None) -> np.ndarray:
    """Images for these seeds, float32 (n, H, W, C) in [0, 1].

    One CPU generator per image: image k depends on its own seed only, so it is
    the same whatever batch it is made in and however a job is split. `on_step`, if
    given, is called before each denoising step (a worker's sign of life on a long batch).
    """
    if type(loaded.pipe).__name__ in PROMPT_LENGTH_SENSITIVE and len(set(prompts)) > 1:
        out = [None] * len(seeds)
        for prompt in dict.fromkeys(prompts):
            where = [i for i, p in enumerate(prompts) if p == prompt]
            images = _call(loaded, version, [seeds[i] for i in where], [prompt] * len(where), on_step)
            for i, image in zip(where, images, strict=True):
                out[i] = image
        return np.stack(out)
    return _call(loaded, version, seeds, prompts, on_step)


def _call(loaded: Loaded, version, seeds: list[int], prompts: list[str], on_step=None) -> np.ndarray:
    import torch

    pipe = loaded.pipe
    pipe.scheduler = fresh_scheduler(loaded, version.scheduler)
    if on_step is not None:
        _call_before_each_step(pipe.scheduler, on_step)
    cls = type(pipe).__name__
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    # Tensors, converted here in float32: pipelines that convert to numpy themselves fail in bf16.
    kwargs = {"generator": generators, "num_inference_steps": version.steps, "output_type": "pt"}
    if cls in UNCONDITIONAL:
        kwargs["batch_size"] = len(seeds)
    else:
        size = version.output_size
        kwargs.update(prompt=prompts, guidance_scale=version.guidance, height=size, width=size)
        if cls not in NO_NEGATIVE_PROMPT and version.negative_prompt:
            kwargs["negative_prompt"] = [version.negative_prompt] * len(seeds)
        if version.model.has_lora and cls in LORA_SCALE_ARGUMENT:
            kwargs[LORA_SCALE_ARGUMENT[cls]] = {"scale": version.lora_scale}
    out_of_memory = ""
    try:
        with torch.inference_mode():
            images = pipe(**kwargs).images
    except torch.cuda.OutOfMemoryError as exc:
        out_of_memory = str(exc)
    except RuntimeError as exc:
        if "out of memory" in str(exc) or "can't allocate memory" in str(exc):
            out_of_memory = str(exc)
        else:
            forget(loaded)
            if loaded.device == "cuda" and cuda_context_lost(exc):
                # Every later task of this process would fail while it still answers pings:
                # end it, so that the chunk (acknowledged late) goes to a healthy worker.
                logger.critical("The CUDA context is broken (%s): ending this worker process", exc)
                os._exit(70)
            raise
    except Exception:
        forget(loaded)
        raise
    if out_of_memory:
        # Here, not in the except block: its traceback held the batch's tensors.
        if loaded.device == "cuda":
            torch.cuda.empty_cache()
        raise OutOfMemory(out_of_memory)
    if isinstance(images, torch.Tensor):  # (n, C, H, W), in the pipeline's dtype
        return images.float().permute(0, 2, 3, 1).cpu().numpy()
    return np.asarray(images, dtype=np.float32)  # a pipeline that makes numpy whatever is asked (LDM)


def _call_before_each_step(scheduler, on_step) -> None:
    """Every pipeline's loop calls its scheduler's `step` once per step (not every pipeline
    takes a step callback). `wraps` keeps the signature that pipelines inspect to decide
    whether to pass `generator` and `eta`."""
    step = scheduler.step

    @functools.wraps(step)
    def stepping(*args, **kwargs):
        on_step()
        return step(*args, **kwargs)

    scheduler.step = stepping


def cuda_context_lost(exc: BaseException) -> bool:
    """Whether an error leaves the process's CUDA context unusable (not one batch's failure)."""
    return any(sign in str(exc) for sign in CUDA_CONTEXT_LOST) and "out of memory" not in str(exc)


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] to (H, W) grey: radiographs are grey whatever the model makes."""
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def describe(loaded: Loaded) -> dict:
    import diffusers
    import torch

    device_name = torch.cuda.get_device_name(0) if loaded.device == "cuda" else "cpu"
    return {
        "device": device_name,
        "dtype": loaded.dtype,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        **loaded.notes,
    }
