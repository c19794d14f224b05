"""Training throughput: the app's training loop against the same loop written directly.

    .venv/bin/python benchmarks/training.py [--method unconditional|lora|full] [--resolution 32]
        [--width 32] [--batch 8] [--steps 30] [--rounds 3] [--threads 1] [--bf16] [--rank 4]
    .venv/bin/python benchmarks/training.py --sd15 [--batch 8] [--steps 20] [--rounds 2]   # on a GPU
    .venv/bin/python benchmarks/training.py --sd15 --small --batch 2 --steps 2 --rounds 1  # CPU check

Default mode, images/s of
  (a) app      generation.training.training_loop with Params(method=...), the loop a
               training job runs on a worker (no checkpoint inside the timed steps);
  (b) direct   the same loop written here with diffusers, transformers, peft and torch
               alone, same model, seed, batch, steps, precision, AdamW and MSE loss:
               unconditional: the app's UNet2DModel config, DDPMScheduler.add_noise;
               lora / full: a random-weight StableDiffusionPipeline folder built once
               (generation.tiny's pipeline with a wider UNet, --width), each run loading
               it, encoding each batch with the VAE (grey repeated to RGB, a latent
               sample times the scaling factor), the frozen CLIP encoder's states of each
               image's prompt, the base's noise schedule, and LoRA rank --rank through
               peft on to_q/to_k/to_v/to_out.0 (lora) or the whole UNet (full);
each round runs both in fresh child processes, in alternating order, on the same
phantom images (drawn by studies.imaging.phantoms, not clinical). Target: (a) / (b)
at least 0.95 (the median of the rounds). Also per CPU second of the process: on a
shared machine that ratio is far steadier than wall time (--threads 1 steadies it
more). Peak memory: the child's resident-set high-water mark (VmHWM) and its rise
during the loop on the CPU, torch.cuda.max_memory_allocated on a GPU. Loading the
model is inside the timed run for both, as a job pays it.

--sd15 (for a GPU): first, once under a temporary folder, a random-weight
StableDiffusionPipeline with SD 1.5's UNet config, an AutoencoderKL of SD's shape and
a CLIP text encoder of SD 1.5's size (generation.tiny's local tokenizer; no download),
saved with save_pretrained; on it the app's LoRA and full loops against the direct
ones as above, 512 px images, float32 weights under bf16 autocast. Then the UNet alone
(random 64 x 64 latents and random text states), trained directly with LoRA rank 4 on
a frozen bf16 base (as diffusers' train_text_to_image_lora.py) and as a full UNet, bf16
autocast: images/s, peak GPU memory, and the FLOPs of one step (forward and backward,
torch.utils.flop_counter) as a fraction of the dense bf16 peak. --small runs all of it
at toy shapes on a CPU: a check of the script, not a measurement.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peaks() -> dict[str, float]:
    """The dense bf16 peaks of benchmarks/generation.py: one table for both benchmarks."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_generation", ROOT / "benchmarks" / "generation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BF16_PEAK_TFLOPS


NUM_TRAIN_TIMESTEPS = 1000


# --- Memory --------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of the block: CUDA's allocator peak on a GPU, else the rise of VmHWM.

    VmHWM is the kernel's high-water mark of this process's resident set: it sees
    torch's own allocations, which tracemalloc does not.
    """

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status_kib("VmHWM") * 1024
        self.rise = self.peak - self.before


# --- The default mode: a small unconditional DDPM --------------------------------------


def phantom_images(count: int, resolution: int):
    """(count, 1, R, R) uint8 phantoms through the app's normaliser, as a training job sees them."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from studies.imaging.normalise import normalise
    from studies.imaging.phantoms import phantom

    pixels = [
        np.array(Image.open(io.BytesIO(normalise(phantom(seed, 256), size=resolution))), dtype=np.uint8)
        for seed in range(count)
    ]
    return torch.from_numpy(np.stack(pixels))[:, None]


def django_ready(var: Path) -> None:
    """generation.training imports Django models: a throwaway VAR_DIR, no database opened."""
    os.environ.update(VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="config.settings")
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()


def run_app(args, images, var: Path) -> float:
    from generation.training import Params, training_loop

    params = Params(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=1e-4,
        resolution=args.resolution,
        seed=0,
        width=args.width,
        checkpoint_every=10**9,
        mixed_precision="bf16" if args.bf16 else "no",
        rank=args.rank,
        method=args.method,
        base_path=args.base or "",
    )
    prompts = training_prompts(len(images)) if args.method != "unconditional" else None
    start = time.perf_counter()
    outcome = training_loop(
        params=params, images=images, checkpoints="checkpoints", until=args.steps, prompts=prompts
    )
    _synchronize()
    seconds = time.perf_counter() - start
    assert outcome.step == args.steps
    return seconds


def run_direct(args, images, var: Path) -> float:
    """The loop as one would write it from diffusers' examples; nothing from the app."""
    if args.method != "unconditional":
        return run_direct_sd(args, images)
    import diffusers
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    torch.manual_seed(0)
    w = args.width
    unet = diffusers.UNet2DModel(
        sample_size=args.resolution,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(w, w * 2, w * 2, w * 4),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).to(device)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    for step in range(args.steps):
        chosen = order[torch.arange(step * args.batch, (step + 1) * args.batch) % len(images)]
        clean = images[chosen].to(device).float() / 127.5 - 1.0
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(clean),), generator=generator).to(device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
            predicted = unet(noisy, timesteps).sample
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize()
    return time.perf_counter() - start


FINDINGS = ["normal", "cardiomegaly", "pleural effusion", "pneumothorax"]


def training_prompts(count: int) -> list[str]:
    """Each image's prompt, as a job makes them from the default template: four distinct ones."""
    return [f"chest x-ray, {FINDINGS[i % len(FINDINGS)]}" for i in range(count)]


def run_direct_sd(args, images) -> float:
    """LoRA or full fine-tuning of a StableDiffusionPipeline folder, written from diffusers'
    train_text_to_image(_lora).py with diffusers, transformers and peft alone: the VAE's
    latents, the frozen CLIP encoder's states (each distinct prompt once), add_noise, MSE, AdamW."""
    import diffusers
    import torch
    import torch.nn.functional as F
    import transformers
    from peft import LoraConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    folder = args.base
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(
        folder, subfolder="tokenizer", local_files_only=True
    )
    text_encoder = transformers.CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", local_files_only=True
    )
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
        module.eval()
    if args.method == "lora":
        torch.manual_seed(0)
        unet.add_adapter(
            LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                       target_modules=["to_k", "to_q", "to_v", "to_out.0"])
        )  # fmt: skip
    else:
        unet.requires_grad_(True)
    vae.to(device)
    text_encoder.to(device)
    unet.to(device)
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    prompts = training_prompts(len(images))
    distinct = sorted(set(prompts))
    with torch.no_grad():
        tokens = tokenizer(
            distinct, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)  # fmt: skip
        states = dict(zip(distinct, text_encoder(tokens)[0], strict=True))
    context_of = torch.stack([states[prompt] for prompt in prompts])
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    channels = vae.config.in_channels
    for step in range(args.steps):
        chosen = order[torch.arange(step * args.batch, (step + 1) * args.batch) % len(images)]
        pixels = images[chosen].to(device).float() / 127.5 - 1.0
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
            with torch.no_grad():
                posterior = vae.encode(pixels.repeat(1, channels, 1, 1)).latent_dist
                latents = posterior.sample(generator=generator) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(latents),), generator=generator).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            predicted = unet(noisy, timesteps, encoder_hidden_states=context_of[chosen.to(device)]).sample
        loss = F.mse_loss(predicted.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize()
    return time.perf_counter() - start


def sd_base(path: Path, *, width: int, sd15: bool = False, small: bool = False) -> tuple[Path, int]:
    """A random-weight StableDiffusionPipeline folder, saved with save_pretrained; and its image size.

    Default: generation.tiny's pipeline made wider (VAE 8/16 channels, UNet width/2*width
    channels, 8-channel heads; the tiny CLIP encoder). --sd15: SD 1.5's UNet config, an
    AutoencoderKL of SD's shape (128/256/512/512, 8x down) and a CLIP text encoder of SD
    1.5's size (12 layers of 768), all random; --small shrinks each to a toy for a CPU check.
    The tokenizer is generation.tiny's local vocabulary (no download).
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel
    from transformers.utils import logging as transformers_logging

    from generation import tiny

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    tokenizer = tiny.clip_tokenizer()
    if sd15:
        channels = (8, 8, 8, 8) if small else (128, 256, 512, 512)
        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1 if small else 2,
            block_out_channels=channels, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=2 if small else 32,
            sample_size=64 if small else 512, scaling_factor=0.18215,
        )  # fmt: skip
        torch.manual_seed(0)
        unet = sd15_unet(small)
        config = tiny.clip_config(tokenizer)
        if not small:  # openai/clip-vit-large-patch14's text tower, as SD 1.5 uses it
            for key, value in dict(
                hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                projection_dim=768, hidden_act="quick_gelu",
            ).items():  # fmt: skip
                setattr(config, key, value)
        torch.manual_seed(0)
        encoder = CLIPTextModel(config)
        size = unet.config.sample_size * 8
    else:
        vae = tiny.kl_vae((8, 16))
        size = 32
        unet = tiny.cond_unet(
            size // 2, cross_attention_dim=32, block_out_channels=(width, 2 * width), attention_head_dim=8,
            norm_num_groups=8,
        )  # fmt: skip
        torch.manual_seed(0)
        encoder = CLIPTextModel(tiny.clip_config(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=tiny.sd_ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path), size


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child_small(args) -> dict:
    """One timed run of (a) or (b) in this fresh process, after one short warm-up of the same kind."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        var = Path(tmp)
        django_ready(var)
        images = phantom_images(args.images, args.resolution)
        run = run_app if args.child == "app" else run_direct
        warm = argparse.Namespace(**{**vars(args), "steps": 2})
        run(warm, images, var / "warm")  # kernels, allocator and lazy imports, for both alike
        with PeakMemory(device) as memory:
            cpu = time.process_time()
            seconds = run(args, images, var / "timed")
            cpu = time.process_time() - cpu
    return {
        "kind": args.child,
        "images_per_s": args.steps * args.batch / seconds,
        "images_per_cpu_s": args.steps * args.batch / cpu,
        "peak_bytes": memory.peak,
        "rise_bytes": memory.rise,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


# --- --sd15: LoRA and full UNet at SD 1.5's shapes ----------------------------------------


def sd15_unet(small: bool):
    from diffusers import UNet2DConditionModel

    if small:  # the code path on a CPU, at toy shapes (a check of this script, not a measurement)
        return UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
        )
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5's defaults


def child_sd15(args) -> dict:
    """One method ("lora" or "full") trained directly for --steps after a warm-up, in bf16 autocast."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    unet = sd15_unet(args.small).to(device)
    if device == "cuda":
        unet.to(memory_format=torch.channels_last)
    if args.child == "lora":
        from peft import LoraConfig

        # As diffusers' train_text_to_image_lora.py: frozen bf16 base, float32 adapter.
        unet.requires_grad_(False)
        unet.to(dtype=torch.bfloat16)
        unet.add_adapter(
            LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                       target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )  # fmt: skip
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scheduler = DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
    )
    side, channels = unet.config.sample_size, unet.config.in_channels
    context = unet.config.cross_attention_dim
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn((args.batch, channels, side, side), generator=generator, device=device)
    text = torch.randn((args.batch, 77, context), generator=generator, device=device)

    def step():
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (args.batch,), generator=generator, device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device, dtype=torch.bfloat16):
            predicted = unet(noisy, timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()  # warm-up: kernels chosen, optimizer state made
    with FlopCounterMode(display=False) as counter:
        step()
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _synchronize()
        seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = next((v for k, v in _peaks().items() if k in name), None)
    achieved = counter.get_total_flops() * args.steps / seconds / 1e12
    return {
        "kind": args.child,
        "images_per_s": args.steps * args.batch / seconds,
        "peak_bytes": memory.peak,
        "device": name,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "tflops_per_step": counter.get_total_flops() / 1e12,
        "achieved_tflops": achieved,
        "fraction_of_peak": achieved / peak if peak else None,
    }


# --- The parent: rounds of fresh children, interleaved ------------------------------------


def child(args, kind: str) -> dict:
    argv = [sys.executable, __file__, "--child", kind]
    for name in ("resolution", "width", "batch", "steps", "images", "rank", "threads"):
        argv += [f"--{name}", str(getattr(args, name))]
    argv += ["--bf16"] * args.bf16 + ["--sd15"] * args.sd15 + ["--small"] * args.small
    argv += ["--method", args.method] + (["--base", str(args.base)] if args.base else [])
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"the {kind} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main_small(args) -> None:
    if args.method == "unconditional":
        compare(args, f"UNet2DModel {args.resolution} px, width {args.width}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-base-") as tmp:
        args.base, args.resolution = sd_base(Path(tmp) / "base", width=args.width)
        compare(
            args,
            f"{args.method}: a random-weight StableDiffusionPipeline (generation.tiny's, UNet width "
            f"{args.width}/{2 * args.width}), {args.resolution} px images, {args.resolution // 2} px latents",
        )


def compare(args, model: str) -> list[float]:
    """Rounds of (a) app and (b) direct in fresh processes, alternating; the ratios printed."""
    print(
        f"{model}, batch {args.batch}, {args.steps} steps, "
        f"{'bf16 autocast' if args.bf16 else 'float32'}, {args.images} phantom images; {args.rounds} rounds, "
        f"{args.threads or 'default'} torch threads",
        flush=True,
    )
    ratios, cpu_ratios = [], []
    for number in range(args.rounds):
        kinds = ["direct", "app"] if number % 2 == 0 else ["app", "direct"]
        result = {kind: child(args, kind) for kind in kinds}
        a, b = result["app"], result["direct"]
        ratios.append(a["images_per_s"] / b["images_per_s"])
        cpu_ratios.append(a["images_per_cpu_s"] / b["images_per_cpu_s"])
        print(
            f"  round {number + 1} ({' then '.join(kinds)}): (a) app {a['images_per_s']:.2f}  "
            f"(b) direct {b['images_per_s']:.2f} images/s, ratio {ratios[-1]:.3f}; per CPU second "
            f"(a) {a['images_per_cpu_s']:.2f}  (b) {b['images_per_cpu_s']:.2f}, ratio {cpu_ratios[-1]:.3f}; "
            "peak memory "
            f"(a) {mib(a['peak_bytes'])} (+{mib(a['rise_bytes'])} in the loop)  "
            f"(b) {mib(b['peak_bytes'])} (+{mib(b['rise_bytes'])}) on {a['device']}, {a['threads']} threads",
            flush=True,
        )
    for what, values in (("images/s", ratios), ("images per CPU second", cpu_ratios)):
        listed = ", ".join(f"{r:.3f}" for r in values)
        print(
            f"(a) / (b) in {what} per round: {listed}; median {statistics.median(values):.3f} (target: 0.95)"
        )
    return ratios


def main_sd15(args) -> None:
    shapes = "toy shapes (--small: a check of the script, not SD 1.5)" if args.small else "SD 1.5's config"
    args.bf16 = True
    with tempfile.TemporaryDirectory(prefix="bench-train-sd15-") as tmp:
        args.base, args.resolution = sd_base(
            Path(tmp) / "base", width=args.width, sd15=True, small=args.small
        )
        for method in ("lora", "full"):
            args.method = method
            compare(
                args,
                f"{method}: the app's loop on a random-weight StableDiffusionPipeline folder, {shapes} "
                f"(UNet, VAE, CLIP text encoder), {args.resolution} px images; float32 weights",
            )
    args.method, args.base = "unconditional", None
    print(f"UNet2DConditionModel alone, {shapes}, random weights, random latents and text states; "
          f"batch {args.batch}, {args.steps} steps, bf16 autocast; direct loops only; {args.rounds} rounds",
          flush=True)  # fmt: skip
    for number in range(args.rounds):
        for kind in ["lora", "full"] if number % 2 == 0 else ["full", "lora"]:
            r = child(args, kind)
            fraction = (
                f"{r['fraction_of_peak']:.1%} of the dense bf16 peak"
                if r["fraction_of_peak"]
                else "no peak known"
            )
            print(
                f"  round {number + 1} {kind:<4}: {r['images_per_s']:.2f} images/s, "
                f"peak {mib(r['peak_bytes'])}, {r['trainable_parameters']:,} trainable parameters, "
                f"{r['tflops_per_step']:.2f} TFLOP/step, "
                f"{r['achieved_tflops']:.1f} TFLOP/s ({fraction}) on {r['device']}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=64, help="phantoms to train on (default mode)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in the default mode")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in each run (default: torch's own)"
    )
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 shapes, LoRA and full UNet (for a GPU)")
    parser.add_argument("--rank", type=int, default=4, help="--sd15: the LoRA rank")
    parser.add_argument(
        "--small", action="store_true", help="--sd15 at toy shapes, to check the script on a CPU"
    )
    parser.add_argument(
        "--method",
        choices=["unconditional", "lora", "full"],
        default="unconditional",
        help="default mode: the training method compared (lora and full on a tiny random SD pipeline)",
    )
    parser.add_argument("--base", help=argparse.SUPPRESS)  # the pipeline folder, for the children
    parser.add_argument("--child", choices=["app", "direct", "lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in ("lora", "full"):
        print(json.dumps(child_sd15(args)))
    elif args.child:
        print(json.dumps(child_small(args)))
    elif args.sd15:
        main_sd15(args)
    else:
        main_small(args)


if __name__ == "__main__":
    main()
