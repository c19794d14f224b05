"""A study's whole life across separate hosts on this one machine, measured.

    sudo .venv/bin/python benchmarks/hosts.py [--broker rabbitmq|redis] [--gpu-hosts 2]
        [--web-hosts 1] [--images 48] [--synthetic 48] [--readers 10] [--kill]

The hosts are those of the multi-host test (tests/hosts.py: network namespaces, each with
its own folders, reaching PostgreSQL, the broker and the S3 server only over its link),
started with `deploy/run` as the README's production outline says. It times each stage:
the hosts becoming healthy, an upload imported through the web host, generation spread
over the GPU hosts (each one's share; with --kill, one GPU host dies mid-job), readers
labelling over HTTP, and the results downloaded; and it checks that every image and
every answer is there exactly once. Needs root (namespaces), like the test.

It runs in a database of its own, `<DATABASE_URL's name>_hosts`, made afresh.
"""

import argparse
import io
import os
import secrets
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fresh_database(url: str) -> str:
    """A new empty database beside DATABASE_URL's; its URL."""
    import psycopg2
    from psycopg2 import sql

    base, _, name = url.rpartition("/")
    bench = f"{name or 'postgres'}_hosts"
    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(bench)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(bench)))
    connection.close()
    return f"{base}/{bench}"


def timed(results: list, stage: str, function, *args, count: int = 0, unit: str = ""):
    started = time.monotonic()
    value = function(*args)
    seconds = time.monotonic() - started
    rate = f"{count / seconds:.1f} {unit}/s" if count else ""
    results.append((stage, seconds, rate))
    print(f"  {stage}: {seconds:.1f} s {rate}", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=["rabbitmq", "redis"], default="rabbitmq")
    parser.add_argument("--gpu-hosts", type=int, default=2)
    parser.add_argument("--web-hosts", type=int, default=1)
    parser.add_argument("--images", type=int, default=48, help="real radiographs uploaded")
    parser.add_argument("--synthetic", type=int, default=48, help="images the model makes for the study")
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--kill", action="store_true", help="kill the first GPU host mid-job")
    args = parser.parse_args()

    database_url = fresh_database(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    from tests import seaweedfs

    seaweedfs.ensure(seaweedfs.DATA_FOLDER)
    storage_url = seaweedfs.s3_url(prefix=f"bench-hosts/{secrets.token_hex(6)}")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        STORAGE_URL=storage_url,
        VAR_DIR=tempfile.mkdtemp(prefix="bench-hosts-var-"),
    )
    from tests.hosts import Deployment, Network

    results: list[tuple[str, float, str]] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    network = Network(folder, prefix="rbench", subnet="10.99.7").create()
    try:
        deployment = Deployment(
            network,
            broker=args.broker,
            database=database_url.rpartition("/")[2],
            storage_url=storage_url,
            CELERY_BEAT_SECONDS="2",
            GENERATION_SILENCE_SECONDS="10",
        )
        print(f"Hosts on {args.broker}: {args.web_hosts} web, {args.gpu_hosts} GPU, 1 ops", flush=True)
        timed(results, "hosts start and answer /healthz", lambda: deployment.start(
            web_hosts=args.web_hosts, gpu_hosts=args.gpu_hosts).wait_healthy())
        run_study(deployment, args, results)
    finally:
        network.destroy()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n| stage | seconds | rate |\n| --- | --- | --- |")
    for stage, seconds, rate in results:
        print(f"| {stage} | {seconds:.1f} | {rate} |")


def run_study(deployment, args, results) -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from generation import tiny
    from generation.models import GeneratedImage, GenerationJob, GenerativeModel
    from studies.imaging.phantoms import phantom
    from studies.models import Answer, ImageSet, ImportJob, Study, StudyModel
    from studies.services import study_reader_add
    from tests.conftest import wait_until as wait
    from tests.studies.files import png16

    users = get_user_model()
    users.objects.create_superuser("researcher", password="researcher-pass")
    admin = deployment.client("researcher", "researcher-pass", admin=True)
    web = deployment.web[0]

    image_set = ImageSet.objects.create(name="site A")
    files = [(f"cxr-{i}.png", png16(phantom(i, 512))) for i in range(args.images)]

    def upload_and_import():
        status, _, body = admin.post(f"/admin/studies/imageset/{image_set.pk}/import/", {}, {"files": files})
        assert status == 200, body[:300]
        done = ImportJob.objects.filter(status="done")
        return wait(done.first, timeout=600, what="the import")

    job = timed(results, f"{args.images} files uploaded and imported", upload_and_import,
                count=args.images, unit="images")
    assert job.results.filter(status="imported").count() == args.images

    incoming = web.folder / "incoming" / "tiny-ddpm"
    tiny.BUILDERS["ddpm"](incoming)
    timed(results, "model registered (stored once in the storage)", web.manage,
          "register_model", "--name", "tiny", str(incoming), "--steps", "10", "--batch-size", "2")
    shutil.rmtree(incoming)

    study = Study.objects.create(title="Across hosts", real_count=args.images)
    study.real_sets.add(image_set)
    model = GenerativeModel.objects.get(name="tiny")
    StudyModel.objects.create(study=study, model=model, count=args.synthetic)
    readers = []
    for index in range(args.readers):
        reader = users.objects.create_user(f"reader{index}", password="reader-pass")
        study_reader_add(study=study, reader=reader)
        readers.append((reader.username, "reader-pass"))

    def generate():
        status, _, body = admin.post(f"/admin/studies/study/{study.pk}/prepare/", {})
        assert status == 200, body[:300]
        generation = GenerationJob.objects.get()
        if args.kill:
            first = deployment.gpu[0]
            made = GeneratedImage.objects.filter(job=generation, provenance__worker=f"gpu@{first.name}")
            wait(made.exists, timeout=600, what="the first GPU host's first image")
            first.kill()
            print(f"  killed {first.name} mid-job", flush=True)
        ready = Study.objects.filter(pk=study.pk, status="ready")
        wait(ready.exists, timeout=1200, what="the study ready")
        return GenerationJob.objects.get()

    generation = timed(results, f"{args.synthetic} images generated and the study drawn", generate,
                       count=args.synthetic, unit="images")
    seeds = sorted(generation.images().values_list("seed", flat=True))
    assert seeds == list(generation.seeds), "an image lost or made twice"
    shares = Counter(generation.images().values_list("provenance__worker", flat=True))
    for worker, made in sorted(shares.items()):
        results.append((f"  made by {worker}", 0.0, f"{made} images"))
        print(f"  {worker}: {made} images", flush=True)

    status, _, body = admin.post(f"/admin/studies/study/{study.pk}/open/", {"override_reason": "benchmark"})
    assert status == 200
    per_reader = args.images + args.synthetic
    totals = timed(results, f"{args.readers} readers label {per_reader} images each", deployment.label,
                   study.pk, readers, count=args.readers * per_reader, unit="answers")
    assert totals == {name: per_reader for name, _ in readers}
    assert Answer.objects.filter(presentation__study=study).count() == args.readers * per_reader

    def download():
        status, _, body = admin.get(f"/admin/studies/study/{study.pk}/results/results.zip", timeout=600)
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return archive.read("answers.csv").decode().count("\n") - 1

    rows = timed(results, "results downloaded", download)
    assert rows == args.readers * per_reader


if __name__ == "__main__":
    main()
