"""Generation throughput: the app's whole path against the diffusers pipeline called directly.

    .venv/bin/python benchmarks/generation.py [--images 24] [--batch 4] [--steps 20] [--repeats 2]
    .venv/bin/python benchmarks/generation.py --sd15 --size 512 --images 64 --batch 8   # on a GPU

Measures images/s of
  (a) app        the whole path: job launch, tasks through the broker, a real Celery
                 worker, the pipeline, normalising, files and database rows;
  (b) direct     the pipeline called directly at the app's batch size;
  (c) per image  the pipeline called once per image;
with the same model, steps, size and generators, interleaved. Target: (a) at least
95% of (b). The worker's pipeline is loaded by a warm-up job first, as it stays
loaded in a running worker. With --sd15 the model has Stable Diffusion 1.5's
shapes (random weights) and, on a GPU, the FLOPs of one direct batch are counted
with torch.utils.flop_counter and reported as a fraction of the dense bf16 peak.
"""

import argparse
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

# Dense bf16 tensor-core peaks (NVIDIA data sheets, without sparsity), most specific name first.
# The NVL parts (as nvidia-smi names them) run at lower clocks than the SXM ones: their own figures.
BF16_PEAK_TFLOPS = {
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200 NVL": 835.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
}


def build_model(folder: Path, sd15: bool, size: int) -> Path:
    """A Stable-Diffusion-shaped pipeline with random weights: small on CPU, SD 1.5 on a GPU."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from generation.tiny import clip_tokenizer

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    if sd15:
        unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768)  # SD 1.5's defaults
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=size,
        )
        text = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=tokenizer.vocab_size,
            max_position_embeddings=77,
        )
    else:
        unet = UNet2DConditionModel(
            sample_size=size // 4,
            block_out_channels=(64, 128),
            layers_per_block=1,
            cross_attention_dim=64,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64, 64),
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=16,
            sample_size=size,
        )
        text = CLIPTextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=tokenizer.vocab_size,
            max_position_embeddings=77,
        )
    text_encoder = CLIPTextModel(text)
    tokenizer.model_max_length = 77
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def direct(folder: Path, *, images: int, batch: int, steps: int, size: int, count_flops: bool) -> dict:
    """(b) and (c): the pipeline called directly, in this process, as the worker would."""
    import torch
    from diffusers import DiffusionPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=dtype).to(device)
    if device == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)

    def run(seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.inference_mode():
            return pipe(
                prompt=["chest x ray"] * len(seeds),
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=size,
                width=size,
                output_type="np",
            ).images

    def timed(group):
        run(list(range(group)))  # warm-up at this batch size
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, images, group):
            run(list(range(first, min(first + group, images))))
        if device == "cuda":
            torch.cuda.synchronize()
        return images / (time.perf_counter() - start)

    result = {"direct": timed(batch), "per_image": timed(1), "device": device}
    if count_flops and device == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            run(list(range(batch)))
        flops = counter.get_total_flops()
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        achieved = flops * result["direct"] / batch / 1e12
        result.update(
            gpu=name,
            tflops_per_batch=flops / 1e12,
            achieved_tflops=achieved,
            fraction_of_peak=achieved / peak if peak else None,
        )
    return result


def app(folder: Path, var: Path, *, images: int, batch: int, steps: int, size: int) -> float:
    """(a): a real worker makes a job; timed from launch to the job's end."""
    env = {**os.environ, "VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "config.settings"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    os.environ.update(VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from config.celery import worker_command
    from generation.jobs import job_launch
    from generation.models import GenerationJob, GenerativeModel
    from generation.services import model_register

    call_command("migrate", verbosity=0)
    model = GenerativeModel.objects.filter(name="bench").first() or model_register(
        name="bench",
        path=str(folder),
        steps=steps,
        batch_size=batch,
        size=size,
        prompts=["chest x ray"],
        scheduler="ddim",
    )
    worker = subprocess.Popen(
        worker_command(loglevel=os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING")),
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:

        def wait(job):
            # Slow polling: on a small machine a busy poll would steal the worker's CPU.
            while GenerationJob.objects.get(pk=job.pk).status not in ("done", "failed", "cancelled"):
                time.sleep(0.5)
            job.refresh_from_db()
            if job.status != "done":
                raise SystemExit(f"benchmark job {job.status}: {job.error}")
            return job

        wait(job_launch(version=model.current_version, count=batch))  # warm-up: the worker loads the pipeline
        launched = timezone.now()
        job = wait(job_launch(version=model.current_version, count=images))
        # From launch to the job's own record of its end: the whole path, not our polling.
        return images / (job.finished - launched).total_seconds()
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 shapes (for a GPU)")
    parser.add_argument("--child", choices=["direct", "app"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--var", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = {"images": args.images, "batch": args.batch, "steps": args.steps, "size": args.size}
    if args.child == "direct":
        print(json.dumps(direct(Path(args.folder), count_flops=args.sd15, **shape)))
        return
    if args.child == "app":
        print(json.dumps({"app": app(Path(args.folder), Path(args.var), **shape)}))
        return
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        tmp = Path(tmp)
        folder = build_model(tmp / "model", args.sd15, args.size)
        print(
            f"Model: {'SD 1.5 shapes' if args.sd15 else 'small SD-shaped'}, random weights; "
            f"{args.images} images "
            f"of {args.size} px, {args.steps} steps, batch {args.batch}",
            flush=True,
        )
        runs = []
        common = [
            "--images",
            str(args.images),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--size",
            str(args.size),
            "--folder",
            str(folder),
        ] + (["--sd15"] if args.sd15 else [])
        for repeat in range(args.repeats):
            d = json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--child", "direct", *common],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                ).stdout.splitlines()[-1]
            )
            a = json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--child", "app", *common, "--var", str(tmp / f"var{repeat}")],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                ).stdout.splitlines()[-1]
            )
            runs.append({**d, **a})
            print(
                f"  run {repeat + 1}: (a) app {a['app']:.2f}  (b) direct {d['direct']:.2f}  "
                f"(c) per image {d['per_image']:.2f} images/s on {d['device']}",
                flush=True,
            )
            if "fraction_of_peak" in d:
                print(
                    f"        {d['gpu']}: {d['achieved_tflops']:.0f} TFLOP/s, "
                    f"{(d['fraction_of_peak'] or 0):.0%} of the dense bf16 peak",
                    flush=True,
                )
    ratios = [r["app"] / r["direct"] for r in runs]
    print(
        f"\n(a) / (b) per run: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f} "
        "(target: at least 0.95)"
    )
    print(
        f"(b) / (c): median {statistics.median(r['direct'] / r['per_image'] for r in runs):.2f} "
        "(what batching gains)"
    )


if __name__ == "__main__":
    main()
