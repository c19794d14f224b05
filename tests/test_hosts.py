"""A study's whole life on separate hosts that share only PostgreSQL, the broker and the S3 server.

On this one machine, tests/hosts.py makes a web host (gunicorn), two GPU-queue worker
hosts and an operations host (default-queue worker and beat), each in a network
namespace of its own with its own folders, every one started by `deploy/run` as the
README's production outline says. The services are reached only over the hosts'
links. Run once on RabbitMQ and once on Redis: both brokers are first-class.

The study: files uploaded through the web host's admin are imported by the operations
host; a model registered on the web host (then its folder deleted) makes the study's
images on both GPU hosts; readers label over HTTP while a second job generates; the
researcher downloads the results.

Faults, each overlapping a stage rather than adding one (the suite's time is counted):
while the study's images are made, one GPU host dies mid-job, the broker goes away
(a Redis of the test's own that keeps nothing on disk is killed and restarted empty,
losing every queued chunk; RabbitMQ, the machine's and shared, has its link cut, see
Deployment.broker_fault) and the S3 server is out of reach for a few seconds; while
readers label and the second job generates, the database is out of reach for 10 s (its
link cut: connections dropped and refused, as a restart shows them). The readers' client
keeps each answer and sends it again after Retry-After, as the labelling page does.
Afterwards: every acknowledged answer stored exactly once, both jobs with exactly their
images and no stored file without its row, /healthz healthy again.
"""

import csv
import io
import secrets
import shutil
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from generation.models import GeneratedImage, GenerationJob, GenerativeModel
from studies.imaging.phantoms import phantom
from studies.models import Answer, Image, ImageSet, ImportJob, Study, StudyImage, StudyModel
from studies.services import study_reader_add
from tests.conftest import stored_names, use_object_storage, wait_until
from tests.generation.models import built
from tests.hosts import BROKERS, Deployment, Network, OwnRedis
from tests.studies.files import png16

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

READERS = 3
SYNTHETIC = 12  # six chunks of two: enough for both GPU hosts to take some
DATABASE_OUTAGE_SECONDS = 10


@pytest.fixture
def network(tmp_path):
    # A subnet and names of its own, so that a run never meets another's leftovers.
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    net = Network(tmp_path / "hosts", prefix=f"r{secrets.token_hex(2)}", subnet=subnet).create()
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture
def own_redis(tmp_path):
    """For the Redis runs: a broker the test may restart, losing what it holds."""
    server = OwnRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_study_lives_its_whole_life_across_hosts_through_faults(
    broker, network, researcher, django_user_model, settings, object_store, request
):
    deployment = Deployment(
        network,
        broker=broker,
        own_redis=request.getfixturevalue("own_redis") if broker == "redis" else None,
        database=connection.settings_dict["NAME"],  # the test database, which the hosts share
        storage_url=use_object_storage(settings, f"hosts/{secrets.token_hex(8)}"),
        CELERY_BEAT_SECONDS="2",
        # A chunk whose worker died is sent again after this much silence (the sweep, on beat).
        GENERATION_SILENCE_SECONDS="10",
    ).start(web_hosts=1, gpu_hosts=2)
    (web,), (gpu1, gpu2), ops = deployment.web, deployment.gpu, deployment.ops
    assert deployment.wait_healthy()["storage"] == "ok: object storage"
    hosts_can_check(researcher, "researcher-pass")
    admin = deployment.client("researcher", "researcher-pass", admin=True)

    # 1. Real radiographs uploaded through the web host's admin, imported by the ops host.
    image_set = ImageSet.objects.create(name="site A")
    files = [(f"cxr-{i}.png", png16(phantom(i, 256))) for i in range(8)]
    status, _, body = admin.post(f"/admin/studies/imageset/{image_set.pk}/import/", {}, {"files": files})
    assert status == 200, body[:500]
    job = wait_until(lambda: ImportJob.objects.filter(status="done").first(), timeout=120, what="the import")
    assert job.results.filter(status="imported").count() == 8
    assert stored_names("uploads") == set()  # the upload is gone from the store once imported

    # 2. A model registered on the web host, whose folder is then deleted: workers get it from the store.
    incoming = web.folder / "incoming" / "tiny-ddpm"
    shutil.copytree(built("ddpm"), incoming)
    web.manage("register_model", "--name", "tiny", str(incoming), "--steps", "10", "--batch-size", "2")
    shutil.rmtree(incoming)

    # 3. The study: its images made on both GPU hosts, through a host's death, the broker's
    # and the storage's outages.
    study = Study.objects.create(title="Across hosts", real_count=8)
    study.real_sets.add(image_set)
    StudyModel.objects.create(study=study, model=GenerativeModel.objects.get(name="tiny"), count=SYNTHETIC)
    for index in range(READERS):
        reader = django_user_model.objects.create_user(f"reader{index}")
        study_reader_add(study=study, reader=hosts_can_check(reader, "reader-pass"))
    # The researcher's buttons, on the web host: the tasks go through the hosts' broker.
    status, _, body = admin.post(f"/admin/studies/study/{study.pk}/prepare/", {})
    assert status == 200 and Study.objects.get(pk=study.pk).status == "preparing", body[:500]
    generation = GenerationJob.objects.get()

    def made_by(worker):
        return GeneratedImage.objects.filter(job=generation, provenance__worker=worker).count()

    wait_until(
        lambda: made_by("gpu@gpu1") >= 1, timeout=180, what=f"gpu1's first image ({gpu1.log('gpu-worker')})"
    )
    gpu1.kill()
    killed_at = made_by("gpu@gpu1")
    storage_back = network.outage(18333, 5)  # gpu2 meets it writing (or boto's retries ride it out)
    deployment.broker_fault(1 if broker == "redis" else 3)
    storage_back.join()
    wait_until(
        lambda: Study.objects.filter(pk=study.pk, status="ready").exists(),
        timeout=240,
        what=f"the study ready after gpu1 died ({ops.log('worker')[-3000:]})",
    )
    generation.refresh_from_db()
    assert generation.status == "done"
    seeds = sorted(generation.images().values_list("seed", flat=True))
    assert seeds == list(generation.seeds)  # exactly its images: none lost, none twice
    shares = Counter(generation.images().values_list("provenance__worker", flat=True))
    assert shares["gpu@gpu1"] == killed_at >= 1 and shares["gpu@gpu2"] == SYNTHETIC - killed_at
    assert any((gpu2.folder / "model-cache").iterdir())  # the model came from the store into its own cache
    # gpu1 was killed mid-batch: files of a batch that it had written but not yet recorded stay in
    # the store, unreferenced (a killed process cleans nothing up; no reader ever sees them). At
    # most one batch of them; every other fault, here and below, must leave none.
    left_by_the_kill = stored_files() - files_with_rows()
    assert len(left_by_the_kill) <= 2, left_by_the_kill  # the batch size registered above

    # 4. Open, then readers label over HTTP at once while a second job generates, through
    # a database outage; every acknowledged answer stored once.
    status, _, body = admin.post(
        f"/admin/studies/study/{study.pk}/open/", {"override_reason": "phantoms and a tiny model"}
    )
    study.refresh_from_db()
    assert status == 200 and study.status == "open", body[:500]
    readers = [(f"reader{i}", "reader-pass") for i in range(READERS)]
    per_reader = study.real_count + SYNTHETIC
    answers = Answer.objects.filter(presentation__study=study)
    model = GenerativeModel.objects.get(name="tiny")
    with ThreadPoolExecutor(1) as pool:
        labelling = pool.submit(deployment.label, study.pk, readers, pace=0.1)
        wait_until(lambda: answers.count() >= READERS or labelling.done(), timeout=60, what="answers")
        status, _, body = admin.post(f"/admin/generation/generativemodel/{model.pk}/generate/", {"count": 12})
        assert status == 200, body[:500]
        second = GenerationJob.objects.exclude(pk=generation.pk).get()
        wait_until(
            lambda: GenerationJob.objects.filter(pk=second.pk, started__isnull=False).exists(),
            timeout=60,
            what="the second job started",
        )
        with network.down(5432):  # mid-job, mid-labelling
            time.sleep(DATABASE_OUTAGE_SECONDS)
        assert labelling.result(timeout=300) == {name: per_reader for name, _ in readers}
    assert deployment.retries > 0  # the readers met the outage
    stored = {str(pid): label for pid, label in answers.values_list("presentation_id", "label")}
    assert stored == deployment.acknowledged and len(stored) == READERS * per_reader
    wait_until(
        lambda: GenerationJob.objects.filter(pk=second.pk, status="done").exists(),
        timeout=120,
        what=f"the second job done after the outage ({gpu2.log('gpu-worker')[-3000:]})",
    )
    assert sorted(second.images().values_list("seed", flat=True)) == list(second.seeds)
    assert deployment.wait_healthy(timeout=60)
    # No file half-written, or written and left, by the broker, storage and database outages.
    assert stored_files() - left_by_the_kill == files_with_rows()

    # 5. The researcher downloads the results from the web host.
    status, headers, body = admin.get(f"/admin/studies/study/{study.pk}/results/results.zip")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("answers.csv").decode())))
    assert len(rows) == READERS * per_reader

    # Nothing any host wrote is under another host's folder, nor needed from one.
    for host in deployment.hosts:
        logs = "".join(host.log(role) for role in host.processes)
        others = [other.folder for other in deployment.hosts if other is not host]
        assert not any(str(folder) in logs for folder in others), f"{host.name} names another host's folder"


def stored_files() -> set[str]:
    return stored_names("images") | stored_names("originals")


def files_with_rows() -> set[str]:
    images = Image.objects.values_list("file", "original")
    return {name for pair in images for name in pair if name} | set(
        StudyImage.objects.exclude(file="").values_list("file", flat=True)
    )


def hosts_can_check(user, password: str):
    """The suite hashes passwords with MD5 for speed; the hosts run the real settings' hashers."""
    user.password = PBKDF2PasswordHasher().encode(password, secrets.token_hex(8), iterations=1000)
    user.save(update_fields=["password"])
    return user
