"""Training throughput: the app's training loop against the same loop written directly.

    .venv/bin/python benchmarks/training.py [--resolution 32] [--width 32] [--batch 8] [--steps 30]
        [--rounds 3] [--threads 1] [--bf16]
    .venv/bin/python benchmarks/training.py --sd15 [--batch 8] [--steps 20] [--rounds 2]   # on a GPU

Default mode, images/s of
  (a) app      generation.training.training_loop with Params(...), the loop a training
               job runs on a worker (no checkpoint inside the timed steps);
  (b) direct   the same loop written here with diffusers and torch: the same
               UNet2DModel config and seed, batch, steps, precision, AdamW,
               DDPMScheduler.add_noise and MSE loss;
each round runs both in fresh child processes, in alternating order, on the same
phantom images (drawn by studies.imaging.phantoms, not clinical). Target: (a) / (b)
at least 0.95 (the median of the rounds). Also per CPU second of the process: on a
shared machine that ratio is far steadier than wall time (--threads 1 steadies it
more). Peak memory: the child's resident-set high-water mark (VmHWM) and its rise
during the loop on the CPU, torch.cuda.max_memory_allocated on a GPU.

--sd15 (for a GPU): a random-weight UNet2DConditionModel with Stable Diffusion 1.5's
config (no download) on 64 x 64 latents (512 px images) with random text embeddings,
trained directly with LoRA rank 4 (peft on to_q/to_k/to_v/to_out.0) and as a full
UNet, bf16 autocast; images/s, peak GPU memory, and the FLOPs of one step (forward
and backward, torch.utils.flop_counter) as a fraction of the dense bf16 peak. It
measures the direct loops only: the app's LoRA and full fine-tuning load a
registered pipeline folder (VAE and text encoder too), which is compared when the
app's side exposes a loop that takes a UNet.
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
    )
    start = time.perf_counter()
    outcome = training_loop(params=params, images=images, folder=var / "checkpoints", until=args.steps)
    _synchronize()
    seconds = time.perf_counter() - start
    assert outcome.step == args.steps
    return seconds


def run_direct(args, images, var: Path) -> float:
    """The loop as one would write it from diffusers' examples; nothing from the app."""
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
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"the {kind} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main_small(args) -> None:
    print(
        f"UNet2DModel {args.resolution} px, width {args.width}, batch {args.batch}, {args.steps} steps, "
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


def main_sd15(args) -> None:
    shapes = "toy shapes (--small: a check of the script, not SD 1.5)" if args.small else "SD 1.5's config"
    print(f"UNet2DConditionModel, {shapes}, random weights; batch {args.batch}, {args.steps} steps, "
          f"bf16 autocast; direct loops only; {args.rounds} rounds", flush=True)  # fmt: skip
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
