"""Peak memory of importing a zip bomb: a 1.5 MB zip of three members just under 512 MB each.

    .venv/bin/python benchmarks/import_memory.py [--member-mb 511.99] [--members 3] [--random]

Writes the zip (members of zero bytes, deflated about 1000:1; with --random,
bytes that do not deflate at all, the worst case that passes the ratio check),
then runs, each in
a fresh process with Django set up and an SQLite database migrated:
  idle   the same process importing nothing (what Django, numpy and pydicom take)
  zip    the app's import of the zip, member by member, as `import_images` runs it
and prints each one's peak memory (VmHWM) and what the import added to it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHUNK = 2**20


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec (see import_dicom.py).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_bomb(path: Path, *, members: int, member_bytes: int, random: bool) -> None:
    fill = os.urandom(CHUNK) if random else bytes(CHUNK)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for index in range(members):
            with zf.open(f"scan_{index}.dcm", "w", force_zip64=True) as member:
                left = member_bytes
                while left:
                    member.write(fill[: min(left, CHUNK)])
                    left -= min(left, CHUNK)


def child(mode: str, archive: Path) -> None:
    with tempfile.TemporaryDirectory() as var:
        os.environ.update(VAR_DIR=var, DJANGO_SETTINGS_MODULE="config.settings")
        os.environ.pop("DATABASE_URL", None)
        import django

        django.setup()
        from django.core.management import call_command

        from studies.imports import images_import, sources_from_paths
        from studies.models import ImageSet

        call_command("migrate", verbosity=0)
        image_set = ImageSet.objects.create(name="benchmark")
        outcomes = []
        if mode == "zip":
            outcomes = [
                f"{o.status} {o.name}: {o.reason}"
                for o in images_import(image_set=image_set, sources=sources_from_paths([archive]))
            ]
    print(json.dumps({"mode": mode, "peak_rss_mb": peak_rss_mb(), "outcomes": outcomes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member-mb", type=float, default=512 - 0.01)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="members that do not deflate")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.archive))
        return
    with tempfile.TemporaryDirectory(prefix="bench-import-memory-") as folder:
        archive = Path(folder) / "bomb.zip"
        size = int(args.member_mb * 2**20)
        write_bomb(archive, members=args.members, member_bytes=size, random=args.random)
        print(
            f"{archive.name}: {archive.stat().st_size / 2**20:.2f} MB, {args.members} members of "
            f"{args.member_mb} MB unpacked",
            flush=True,
        )
        peaks = {}
        for mode in ["idle", "zip"]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--archive", str(archive)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[mode] = result["peak_rss_mb"]
            print(f"  {mode:<5} peak memory {peaks[mode]:7.0f} MB", flush=True)
            for line in result["outcomes"]:
                print(f"        {line}")
    added = max(peaks["zip"] - peaks["idle"], 0)
    print(f"The import added {added:.0f} MB to the process's peak memory.")


if __name__ == "__main__":
    main()
