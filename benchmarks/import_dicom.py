"""Import speed and memory: the app's import of 2500 x 2500 16-bit DICOM against plain pydicom + Pillow.

    .venv/bin/python benchmarks/import_dicom.py [--files 24] [--repeats 3]

Writes a folder of phantom DICOM files, then runs, each in a fresh process and
interleaved so that machine noise hits all alike:
  baseline   pydicom.dcmread + Image.fromarray(...).resize((512, 512)).save(PNG)
  app        the app's whole import (decode, window, normalise, files, database rows)
  app-zip    the same files from one .zip (read member by member)
  app-half   the app's import of half the files, to show memory does not grow with them
It prints images/s and peak memory (max RSS) per mode and the ratio app / baseline.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would
    # report its parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_baseline(paths: list[Path], out: Path) -> float:
    import pydicom
    from PIL import Image

    start = time.perf_counter()
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        Image.fromarray(ds.pixel_array).resize((512, 512)).save(out / f"{index}.png", "PNG")
    return time.perf_counter() - start


def run_app(sources: list[str], var: Path) -> float:
    """The import loop alone is timed: Django's start and migrations are not."""
    os.environ.update(VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="config.settings")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    from studies.imports import images_import, sources_from_paths
    from studies.models import ImageSet

    call_command("migrate", verbosity=0)
    image_set = ImageSet.objects.create(name="benchmark")
    start = time.perf_counter()
    outcomes = list(images_import(image_set=image_set, sources=sources_from_paths(sources)))
    seconds = time.perf_counter() - start
    refused = [o for o in outcomes if o.status != "imported"]
    if refused:
        raise SystemExit(f"benchmark files were not imported: {refused[:3]}")
    return seconds


def child(mode: str, folder: Path) -> None:
    paths = sorted(folder.glob("*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if mode == "baseline":
            seconds, count = run_baseline(paths, tmp), len(paths)
        elif mode == "app":
            seconds, count = run_app([str(p) for p in paths], tmp), len(paths)
        elif mode == "app-half":
            half = paths[: len(paths) // 2]
            seconds, count = run_app([str(p) for p in half], tmp), len(half)
        elif mode == "app-zip":
            seconds, count = run_app([str(folder / "all.zip")], tmp), len(paths)
    print(json.dumps({"mode": mode, "count": count, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder))
        return

    from studies.imaging.phantoms import phantom, write_dicom

    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        folder = Path(folder)
        print(f"Writing {args.files} phantom DICOM files of 2500 x 2500, 16-bit storage...", flush=True)
        for seed in range(args.files):
            write_dicom(
                folder / f"cxr_{seed:04d}.dcm",
                phantom(seed, 2500),
                seed=seed,
                bits_stored=16,
                monochrome1=bool(seed % 2),
            )
        with zipfile.ZipFile(folder / "all.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.glob("*.dcm")):
                zf.write(path, path.name)
        size_mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 2**20
        print(
            f"{size_mb:.0f} MB of DICOM; zip {os.path.getsize(folder / 'all.zip') / 2**20:.0f} MB", flush=True
        )
        results: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            for mode in ["baseline", "app", "app-zip", "app-half"]:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--folder", str(folder)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(mode, []).append(result)
                print(
                    f"  run {repeat + 1} {mode:<9} {result['count'] / result['seconds']:6.2f} images/s  "
                    f"peak {result['peak_rss_mb']:6.0f} MB",
                    flush=True,
                )
    print("\nMedian of the runs:")
    rate = {}
    for mode, runs in results.items():
        rate[mode] = statistics.median(r["count"] / r["seconds"] for r in runs)
        peak = statistics.median(r["peak_rss_mb"] for r in runs)
        print(
            f"  {mode:<9} {rate[mode]:6.2f} images/s   peak memory {peak:6.0f} MB"
            f"   ({runs[0]['count']} files)"
        )
    for mode in ["app", "app-zip"]:
        # Each repeat's app run against the baseline run just before it, then the median.
        ratios = [
            b["count"] / b["seconds"] / (a["count"] / a["seconds"])
            for b, a in zip(results["baseline"], results[mode], strict=True)
        ]
        print(
            f"{mode} time / baseline time, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f} (target for app: at most 1.5)"
        )


if __name__ == "__main__":
    main()
