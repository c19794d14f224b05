"""A study's whole life across separate hosts on this one machine, measured.

    sudo .venv/bin/python benchmarks/hosts.py [--broker rabbitmq|redis] [--gpu-hosts 2]
        [--web-hosts 1] [--images 48] [--synthetic 48] [--readers 10] [--kill] [--faults]

The hosts are those of the multi-host test (tests/hosts.py: network namespaces, each with
its own folders, reaching PostgreSQL, the broker and the S3 server only over its link),
started with `deploy/run` as the README's production outline says. It times each stage:
the hosts becoming healthy, an upload imported through the web host, generation spread
over the GPU hosts (each one's share; with --kill, one GPU host dies mid-job), readers
labelling over HTTP, and the results downloaded; and it checks that every image and
every answer is there exactly once. Needs root (namespaces), like the test.

With --faults, the faults of the multi-host test at this size (see tests/test_hosts.py):
while the study's images are made, the first GPU host dies, the S3 server is out of reach
for 5 s and the broker goes away (on Redis, a redis-server of the run's own keeping
nothing on disk is killed and restarted empty; on RabbitMQ, the machine's, its link is cut
for 3 s); while the readers label, a second job generates and the database is out of reach
for 10 s. It prints each fault with its time and checks that every acknowledged answer is
stored once, both jobs have exactly their images, no stored file lacks its row and
/healthz is healthy again.

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
from concurrent.futures import ThreadPoolExecutor
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
    parser.add_argument("--faults", action="store_true", help="the test's faults (implies --kill)")
    args = parser.parse_args()
    args.kill = args.kill or args.faults

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
    from tests.hosts import Deployment, Network, OwnRedis

    results: list[tuple[str, float, str]] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    network = Network(folder, prefix="rbench", subnet="10.99.7").create()
    own_redis = OwnRedis(folder / "redis").start() if args.faults and args.broker == "redis" else None
    try:
        deployment = Deployment(
            network,
            broker=args.broker,
            database=database_url.rpartition("/")[2],
            storage_url=storage_url,
            own_redis=own_redis,
            CELERY_BEAT_SECONDS="2",
            GENERATION_SILENCE_SECONDS="10",
        )
        print(f"Hosts on {args.broker}: {args.web_hosts} web, {args.gpu_hosts} GPU, 1 ops", flush=True)
        timed(results, "hosts start and answer /healthz", lambda: deployment.start(
            web_hosts=args.web_hosts, gpu_hosts=args.gpu_hosts).wait_healthy())
        run_study(deployment, args, results)
    finally:
        network.destroy()
        if own_redis:
            own_redis.stop()
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
    from tests.conftest import stored_names
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
            fault(f"{first.name} killed mid-job, after {made.count()} of its images")
        if args.faults:
            storage_back = deployment.network.outage(18333, 5)
            fault("the S3 server's link cut for 5 s")
            at = time.monotonic()
            fault(deployment.broker_fault(1 if args.broker == "redis" else 3), at=at)
            storage_back.join()
        ready = Study.objects.filter(pk=study.pk, status="ready")
        wait(ready.exists, timeout=1200, what="the study ready")
        return GenerationJob.objects.get()

    origin = time.monotonic()  # faults are timed from the generation's launch
    faults: list[str] = []

    def fault(what: str, at: float | None = None) -> None:
        faults.append(f"{(at or time.monotonic()) - origin:.1f} s: {what}")
        print(f"  fault at {faults[-1]}", flush=True)

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
    answers = Answer.objects.filter(presentation__study=study)

    def label_through_faults():
        """Readers label; with --faults a second job generates meanwhile and the database goes."""
        if not args.faults:
            return deployment.label(study.pk, readers), None
        with ThreadPoolExecutor(1) as pool:
            labelling = pool.submit(deployment.label, study.pk, readers)
            wait(lambda: answers.count() >= args.readers or labelling.done(), timeout=120, what="answers")
            status, _, body = admin.post(
                f"/admin/generation/generativemodel/{model.pk}/generate/", {"count": args.synthetic // 2}
            )
            assert status == 200, body[:300]
            second = GenerationJob.objects.exclude(pk=generation.pk).get()
            wait(lambda: GenerationJob.objects.filter(pk=second.pk, started__isnull=False).exists(),
                 timeout=120, what="the second job started")
            fault(f"the database's link cut for 10 s, at {answers.count()} answers, "
                  f"the second job at {second.images().count()} of {second.count} images")
            with deployment.network.down(5432):
                time.sleep(10)
            return labelling.result(timeout=1200), second

    totals, second = timed(results, f"{args.readers} readers label {per_reader} images each",
                           label_through_faults, count=args.readers * per_reader, unit="answers")
    assert totals == {name: per_reader for name, _ in readers}
    assert answers.count() == args.readers * per_reader
    if args.faults:
        check_faults(deployment, answers, second, faults, results, stored_names)

    def download():
        status, _, body = admin.get(f"/admin/studies/study/{study.pk}/results/results.zip", timeout=600)
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return archive.read("answers.csv").decode().count("\n") - 1

    rows = timed(results, "results downloaded", download)
    assert rows == args.readers * per_reader


def check_faults(deployment, answers, second, faults, results, stored_names) -> None:
    """What the faults left: every check of the multi-host test, printed as well as asserted."""
    from generation.models import GenerationJob
    from studies.models import Image, StudyImage
    from tests.conftest import wait_until as wait

    stored = {str(pid): label for pid, label in answers.values_list("presentation_id", "label")}
    checks = [
        (f"acknowledged answers stored once ({len(deployment.acknowledged)}; "
         f"{deployment.retries} requests sent again)", stored == deployment.acknowledged),
    ]
    started = time.monotonic()
    wait(lambda: GenerationJob.objects.filter(pk=second.pk, status__in=["done", "failed"]).exists(),
         timeout=600, what="the second job ended")
    second.refresh_from_db()
    seeds = sorted(second.images().values_list("seed", flat=True))
    checks.append((f"the second job {second.status} with exactly its {second.count} images "
                   f"({time.monotonic() - started:.1f} s after the readers finished)",
                   second.status == "done" and seeds == list(second.seeds)))
    started = time.monotonic()
    deployment.wait_healthy(timeout=120)
    checks.append((f"/healthz 200 again ({time.monotonic() - started:.1f} s after that)", True))
    files = stored_names("images") | stored_names("originals")
    rows = {name for pair in Image.objects.values_list("file", "original") for name in pair if name}
    rows |= set(StudyImage.objects.exclude(file="").values_list("file", flat=True))
    checks.append((f"no stored file without its row ({len(files)} files, {len(rows)} rows)", files == rows))
    logs = "".join(
        (host.folder / f"{role}.log").read_text(errors="replace")
        for host in deployment.hosts
        for role in host.processes
    )
    for needle, what in [
        ("the storage cannot be reached", "chunks that met the storage's outage, left to the sweep"),
        ("lost its chunks", "sweeps that sent lost chunks again"),
        ("answering 503 with Retry-After", "web processes that answered 503 (logged once a minute)"),
    ]:
        checks.append((f"{what}: {logs.count(needle)} in the logs", True))
    print("\nFaults:", *faults, sep="\n  ")
    print("Checks:", *(f"{'ok' if ok else 'FAILED'}: {what}" for what, ok in checks), sep="\n  ")
    for what, ok in checks:
        results.append((f"  {'ok' if ok else 'FAILED'}: {what}", 0.0, ""))
    assert all(ok for _, ok in checks), "a check failed"


if __name__ == "__main__":
    main()
