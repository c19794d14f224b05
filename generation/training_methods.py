"""What each training method trains, how a batch becomes its loss, how it draws and how it is saved.

Worker side (imports torch): `unconditional` is a grey DDPM UNet from scratch in pixel space;
`lora` and `full` fine-tune a registered StableDiffusionPipeline in its latent space, LoRA
through peft on the UNet's attention projections, full on the whole UNet (and the text
encoder when asked). The loop, checkpoints and the job are in generation/training.py.
"""

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image as PILImage

from .pipelines import to_grey

NUM_TRAIN_TIMESTEPS = 1000
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
PREVIEW_SEEDS = range(4)
PREVIEW_STEPS = 10


class Trainee(ABC):
    """The modules a method trains (`trained`, by name, as the checkpoints hold them) and
    the pipeline of the same class as the one that will be registered (`pipeline`)."""

    trained: dict[str, torch.nn.Module]
    pipeline: diffusers.DiffusionPipeline
    noise_scheduler: diffusers.DDPMScheduler

    @property
    def unet(self) -> torch.nn.Module:
        return self.trained["unet"]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self.trained.values() for p in module.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for module in self.trained.values():
            module.train(mode)

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the trainable parameters and the buffers, on the CPU."""
        out = {}
        for name, module in self.trained.items():
            kept = self._kept(module)
            for key, tensor in module.state_dict().items():
                if key in kept:
                    out[f"{name}.{key}"] = tensor.detach().cpu().contiguous()
        return out

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for name, module in self.trained.items():
            prefix = f"{name}."
            own = {key.removeprefix(prefix): t for key, t in weights.items() if key.startswith(prefix)}
            missing = self._kept(module) - own.keys()
            unexpected = module.load_state_dict(own, strict=False).unexpected_keys
            if missing or unexpected:
                raise ValueError(
                    f"the checkpoint does not fit the {name}: missing {sorted(missing)[:3]}, "
                    f"unexpected {sorted(unexpected)[:3]}"
                )

    @staticmethod
    def _kept(module: torch.nn.Module) -> set[str]:
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        return {key for key in module.state_dict() if key in trainable or key not in frozen}

    @abstractmethod
    def predict(self, chosen: torch.Tensor, generator: torch.Generator) -> tuple:
        """(prediction, target, timesteps) for the images at `chosen`; noise from `generator`."""

    @abstractmethod
    def draw(self, *, seeds, resolution: int, guidance: float) -> PILImage.Image:
        """A 2 x 2 grid of grey images at these seeds with the current weights."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write what gets registered: a pipeline folder, or a LoRA adapter folder."""

    def _noisy(self, clean: torch.Tensor, generator: torch.Generator) -> tuple:
        # Drawn on the CPU generator whatever the device: the same numbers everywhere.
        device = clean.device
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(clean),), generator=generator).to(device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        return noisy, target, timesteps


def loss_of(prediction, target, timesteps, *, noise_scheduler, snr_gamma: float | None) -> torch.Tensor:
    """MSE, or Min-SNR-weighted MSE as in diffusers' train_text_to_image.py."""
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if noise_scheduler.config.prediction_type == "epsilon":
        weights = weights / snr
    elif noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()


def grid(images: torch.Tensor) -> PILImage.Image:
    """(4, C, H, W) floats in [0, 1] as one 2 x 2 grey 8-bit picture."""
    grey = np.stack([to_grey(image) for image in images.float().permute(0, 2, 3, 1).cpu().numpy()])
    pixels = (np.clip(grey, 0, 1) * 255).round().astype(np.uint8)
    rows = [np.concatenate(list(pixels[i : i + 2]), axis=1) for i in range(0, len(pixels), 2)]
    return PILImage.fromarray(np.concatenate(rows, axis=0), mode="L")


def _generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


# --- unconditional ----------------------------------------------------------------------


def unet_build(*, resolution: int, width: int, seed: int) -> diffusers.UNet2DModel:
    """A grey DDPM UNet from scratch: four levels (three halvings), attention at the third."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.UNet2DModel(
            sample_size=resolution,
            in_channels=1,
            out_channels=1,
            layers_per_block=2,
            block_out_channels=(width, width * 2, width * 2, width * 4),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )


def noise_scheduler() -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)


class Unconditional(Trainee):
    def __init__(self, params, images: torch.Tensor, device: str):
        unet = unet_build(resolution=params.resolution, width=params.width, seed=params.seed).to(device)
        self.trained = {"unet": unet}
        self.noise_scheduler = noise_scheduler()
        self.pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=self.noise_scheduler)
        self.pipeline.set_progress_bar_config(disable=True)
        self.images = images
        self.device = device

    def predict(self, chosen, generator):
        clean = self.images[chosen].to(self.device).float() / 127.5 - 1.0
        noisy, target, timesteps = self._noisy(clean, generator)
        return self.unet(noisy, timesteps).sample, target, timesteps

    def draw(self, *, seeds, resolution, guidance):
        # 50 DDIM steps is what it is registered with; a preview takes fewer.
        self.pipeline.scheduler = diffusers.DDIMScheduler.from_config(self.noise_scheduler.config)
        seeds = list(seeds)
        out = self.pipeline(
            batch_size=len(seeds), generator=_generators(seeds), num_inference_steps=PREVIEW_STEPS,
            output_type="pt",
        ).images  # fmt: skip
        self.pipeline.scheduler = self.noise_scheduler
        return grid(torch.as_tensor(out))

    def save(self, folder):
        unet = self.unet.to("cpu").eval()
        diffusers.DDPMPipeline(unet=unet, scheduler=noise_scheduler()).save_pretrained(
            folder, safe_serialization=True
        )


# --- lora and full, on a StableDiffusionPipeline base -----------------------------------


class StableDiffusion(Trainee):
    """Latent training of a Stable Diffusion base: the VAE encodes each image (grey repeated
    to the VAE's channels), the tokenizer and text encoder make the prompt's conditioning."""

    def __init__(self, params, images: torch.Tensor, prompts: list[str], base_path: str, device: str):
        for library_logging in (diffusers.utils.logging, transformers.utils.logging):
            library_logging.disable_progress_bar()  # they would fill the worker's log
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(base_path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        self.own_scheduler = pipe.scheduler
        self.noise_scheduler = diffusers.DDPMScheduler.from_pretrained(
            base_path, subfolder="scheduler", local_files_only=True
        )
        for module in (pipe.vae, pipe.text_encoder, pipe.unet):
            module.requires_grad_(False)
            module.eval()
        self.lora = params.method == "lora"
        self.train_text_encoder = params.method == "full" and params.train_text_encoder
        if self.lora:
            self.lora_config = LoraConfig(
                r=params.rank, lora_alpha=params.rank, init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            )  # fmt: skip
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(params.seed)  # the adapter's starting weights
                pipe.unet.add_adapter(self.lora_config)
        else:
            pipe.unet.requires_grad_(True)
        self.trained = {"unet": pipe.unet}
        if self.train_text_encoder:
            pipe.text_encoder.requires_grad_(True)
            self.trained["text_encoder"] = pipe.text_encoder
        pipe.to(device)
        self.pipeline = pipe
        self.images = images
        self.prompts = prompts
        self.encoded: dict[str, torch.Tensor] = {}
        self.device = device

    def predict(self, chosen, generator):
        pipe = self.pipeline
        pixels = self.images[chosen].to(self.device).float() / 127.5 - 1.0
        pixels = pixels.repeat(1, pipe.vae.config.in_channels // pixels.shape[1], 1, 1)
        with torch.no_grad():
            posterior = pipe.vae.encode(pixels).latent_dist
            latents = posterior.sample(generator=generator) * pipe.vae.config.scaling_factor
        noisy, target, timesteps = self._noisy(latents, generator)
        prompts = [self.prompts[i] for i in chosen.tolist()]
        if self.train_text_encoder:
            context = self._encode(tuple(prompts))
        else:
            context = torch.cat([self._encoded(prompt) for prompt in prompts])
        return self.unet(noisy, timesteps, encoder_hidden_states=context).sample, target, timesteps

    def _encode(self, prompts: tuple[str, ...]) -> torch.Tensor:
        """The text encoder's hidden states, as StableDiffusionPipeline.encode_prompt makes them."""
        pipe = self.pipeline
        tokens = pipe.tokenizer(
            list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        mask = None
        if getattr(pipe.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        return pipe.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]

    def _encoded(self, prompt: str) -> torch.Tensor:
        # A frozen encoder gives each prompt the same states every step: computed once, in float32.
        if prompt not in self.encoded:
            with torch.no_grad(), torch.autocast(self.device, enabled=False):
                self.encoded[prompt] = self._encode((prompt,))
        return self.encoded[prompt]

    def preview_prompts(self) -> list[str]:
        distinct = list(dict.fromkeys(self.prompts))
        return [distinct[i % len(distinct)] for i in range(len(PREVIEW_SEEDS))]

    def draw(self, *, seeds, resolution, guidance):
        pipe = self.pipeline
        pipe.scheduler = type(self.own_scheduler).from_config(self.own_scheduler.config)
        seeds = list(seeds)
        prompts = self.preview_prompts()[: len(seeds)]
        out = pipe(
            prompt=prompts, generator=_generators(seeds), num_inference_steps=PREVIEW_STEPS,
            guidance_scale=guidance, height=resolution, width=resolution, output_type="pt",
        ).images  # fmt: skip
        return grid(out)

    def save(self, folder):
        pipe = self.pipeline
        if self.lora:
            # As diffusers loads it (load_lora_weights); rank and alpha travel in the metadata.
            diffusers.StableDiffusionPipeline.save_lora_weights(
                folder,
                unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                unet_lora_adapter_metadata=self.lora_config.to_dict(),
                safe_serialization=True,
            )
            return
        pipe.to("cpu")
        pipe.scheduler = self.own_scheduler
        pipe.save_pretrained(folder, safe_serialization=True)


def trainee_build(*, params, images: torch.Tensor, prompts: list[str] | None, device: str) -> Trainee:
    if params.method == "unconditional":
        return Unconditional(params, images, device)
    if params.method in ("lora", "full"):
        return StableDiffusion(params, images, prompts or [""] * len(images), params.base_path, device)
    raise ValueError(f"unknown training method {params.method!r}")


@contextlib.contextmanager
def random_state_kept(device: str):
    """Whatever runs inside (a preview) leaves torch's random state as it found it."""
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
