"""Labelling at scale: readers answering through gunicorn and PostgreSQL, as in production.

    .venv/bin/python benchmarks/labelling.py [--compare main] [--cache-url redis://127.0.0.1:6379/11]
        [--readers 50] [--pace 2] [--duration 20] [--saturation-readers 50]
        [--saturation-duration 15] [--rounds 3] [--workers 4] [--hosts 1] [--cores-per-host 0]
        [--images 400]

For the code of the working tree, and with --compare REV for that git revision too
(checked out into a temporary git worktree, run with the same virtual environment), it:
  1. recreates a PostgreSQL database per tree (--database, default: DATABASE_URL's name
     + "_bench", and "_bench_base" for REV), migrates it and seeds one open study of
     --images real images, its blinding audit stored as `study_open` stores it, and the
     readers with their sequences;
  2. starts --hosts gunicorn instances per tree (`gunicorn config.wsgi --workers N`), one
     port each; the load generator sends each request to the next port in turn (round
     robin, so one reader's requests reach every host: sessions must be shared); with
     --cores-per-host N each host runs on N cores of its own (`sched_setaffinity`), so that
     one machine can show what a second host adds;
  3. logs every reader in (GET and POST /accounts/login/, with the form's CSRF token) and
     opens the labelling page as static/js/label/ does: the page, GET .../state, the
     images of the current and the next presentation; then each answer is a POST
     .../answer (X-CSRFToken from the page's meta tag, Accept: application/json) whose
     JSON is the new state, followed by a GET of the image of the state's `next` (the
     page's prefetch). After --reload-every answers on average (at random, so that
     readers who started together do not reload in step) a reader reloads the page (page,
     state, two images). A request that fails is sent again, as the page does;
  4. runs --rounds rounds, alternating between the trees (ABBA), of a realistic phase
     (--readers readers, each answering once every --pace seconds from a random offset)
     and a saturation phase (--saturation-readers readers answering without a pause);
  5. checks afterwards, in the database, that every acknowledged answer is stored once,
     with its label, and nothing else.
It prints per-request-kind latencies (p50/p95/p99) of the realistic phase, answers/s
at saturation (median of the rounds), the CPU time per answer at saturation of the web
tier, of PostgreSQL and of the whole machine less the load generator (steadier than
answers/s on a shared machine: at saturation, answers/s is about the cores over the
machine's CPU per answer) and, with --compare, the ratios round by round.
The servers run with DJANGO_ENV=development (production refuses plain HTTP: TLS ends at
nginx in front of it) and DEBUG off.
"""

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlparse

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-reader-pass"
KINDS = ("page", "state", "answer", "image")


# ---- Seeding (runs inside the tree under test, with its Django) -----------------------------------
def seed(images: int, readers: int) -> None:
    import django

    django.setup()
    import numpy as np
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User

    from studies.images import image_build
    from studies.imaging.decode import Decoded
    from studies.lifecycle import study_audit
    from studies.models import Image, ImageSet, Study, StudyImage
    from studies.services import study_reader_add

    image_set = ImageSet.objects.create(name="benchmark")
    rng = np.random.default_rng(0)
    pool = []
    for index in range(images):
        # Smooth noise, not phantoms: drawing phantoms would take most of the setup.
        pixels = rng.random((64, 64), dtype=np.float32)
        decoded = Decoded(pixels=pixels, source_format="PNG", width=64, height=64, bit_depth=16)
        image = image_build(
            decoded=decoded, origin=Image.Origin.REAL, source_sha256=f"{index:064x}", image_set=image_set
        )
        image.save()
        pool.append(image)
    study = Study.objects.create(
        title="Labelling benchmark",
        status=Study.Status.OPEN,
        instructions="Label each image **real** or **fake**.",
    )
    StudyImage.objects.bulk_create(StudyImage(study=study, image=image) for image in pool)
    study.audit_report = study_audit(study).as_dict()  # what study_open stores: the row's real weight
    study.save(update_fields=["audit_report"])
    password = make_password(PASSWORD)  # hashed once: the same hash for every reader
    for number in range(1, readers + 1):
        user = User.objects.create(username=f"bench{number:03d}", password=password)
        study_reader_add(study=study, reader=user)
    print(json.dumps({"study": study.pk, "readers": [f"bench{n:03d}" for n in range(1, readers + 1)]}))


# nginx as the README's production outline puts it in front (TLS apart: plain HTTP here).
NGINX_TEMP = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {var}/nginx.pid;
error_log {var}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temp}
    upstream web {{ {upstream} {keepalive} }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            {connection}
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
        }}
        location /protected-media/ {{
            internal;
            alias {var}/media/;
            etag off;
            add_header Cache-Control "private, no-store" always;
        }}
    }}
}}
"""


# ---- Servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """One tree (the working tree or a revision) on its own database, served by gunicorn."""

    def __init__(self, tree: Path, name: str, args, suffix: str = ""):
        self.tree, self.name, self.args = tree, name, args
        self.var = Path(tempfile.mkdtemp(prefix="labelling-"))
        base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
        self.db_base = base
        self.db_name = (args.database or f"{base.path.lstrip('/') or 'postgres'}_bench") + suffix
        self.db_url = base._replace(path="/" + self.db_name).geturl()
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_ENV="development",
            DEBUG="0",
            DATABASE_URL=self.db_url,
            VAR_DIR=str(self.var),
            MEDIA_ROOT=str(self.var / "media"),
            PYTHONPATH=str(tree),
            LOG_LEVEL="WARNING",
            OMP_NUM_THREADS="1",
        )
        if args.cache_url:
            # Each tree on a Redis database of its own: the same session keys and user ids in
            # both would otherwise mix one tree's cached sessions and users into the other's.
            url = urlparse(args.cache_url)
            number = int(url.path.strip("/") or 0) + (1 if suffix else 0)
            self.env["CACHE_URL"] = url._replace(path=f"/{number}").geturl()
        if args.nginx:
            self.env["READER_IMAGE_ACCEL_PREFIX"] = "/protected-media/"
        self.servers: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def admin_connection(self):
        return psycopg2.connect(
            host=self.db_base.hostname,
            port=self.db_base.port or 5432,
            user=self.db_base.username or "postgres",
            password=self.db_base.password,
            dbname="postgres",
        )

    def setup(self) -> dict:
        conn = self.admin_connection()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{self.db_name}"')
        conn.close()
        py = sys.executable
        subprocess.run([py, "manage.py", "migrate", "-v", "0"], cwd=self.tree, env=self.env, check=True)
        if self.args.cache_url:
            # Sessions of a former run must not linger in the cache.
            subprocess.run(
                [
                    py,
                    "-c",
                    "import django; django.setup(); from django.core.cache import cache; cache.clear()",
                ],
                cwd=self.tree,
                env=self.env,
                check=True,
            )
        out = subprocess.run(
            [
                py,
                str(Path(__file__).resolve()),
                "_seed",
                str(self.args.images),
                str(self.args.readers_needed),
            ],
            cwd=self.tree,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    def start(self, hosts: int, workers: int) -> list[str]:
        self.stop()
        for index in range(hosts):
            port = free_port()
            log = open(self.var / f"gunicorn-{port}.log", "w")
            command = [sys.executable, "-m", "gunicorn", "config.wsgi", "--workers", str(workers)]
            command += ["--bind", f"127.0.0.1:{port}", "--backlog", "2048"]
            if self.args.threads:
                command += ["--worker-class", "gthread", "--threads", str(self.args.threads)]
            self.servers.append(
                subprocess.Popen(
                    command,
                    cwd=self.tree,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=self.pinned(index),
                )
            )
            self.ports.append(port)
        urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        if self.args.nginx:
            urls = [self.start_nginx()]
        for url in urls:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url + "/accounts/login/", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn at {url} did not answer; see {self.var}")
                time.sleep(0.3)
        return urls

    def start_nginx(self) -> str:
        """nginx in front of the hosts, as the README's production outline has it: one address,
        the hosts behind it in turn, reader images sent by nginx (READER_IMAGE_ACCEL_PREFIX)."""
        port, var = free_port(), self.var
        var.chmod(0o755)  # nginx's workers run as another user, and send the images from here
        upstream = "\n".join(f"server 127.0.0.1:{p};" for p in self.ports)
        temp = "\n".join(f"{kind}_temp_path {var}/nginx-{kind};" for kind in NGINX_TEMP)
        # With gthread workers (--threads), nginx keeps its connections to them open.
        keepalive = "keepalive 64;" if self.args.threads else ""
        connection = (
            'proxy_set_header Connection "";' if self.args.threads else "proxy_set_header Connection close;"
        )
        config = NGINX_CONF.format(
            var=var, port=port, upstream=upstream, temp=temp, keepalive=keepalive, connection=connection
        )
        (var / "nginx.conf").write_text(config)
        log = open(var / "nginx.log", "w")
        command = ["nginx", "-c", str(var / "nginx.conf"), "-p", str(var)]
        self.servers.append(subprocess.Popen(command, stdout=log, stderr=log))
        return f"http://127.0.0.1:{port}"

    def pinned(self, index: int):
        """With --cores-per-host N: host k's processes run on cores kN to kN+N-1 only, so that
        hosts on one machine stand for hosts with N cores each (the load generator, PostgreSQL
        and Redis are not pinned)."""
        per_host = self.args.cores_per_host
        if not per_host:
            return None
        count = os.cpu_count() or 1
        cores = {(index * per_host + offset) % count for offset in range(per_host)}
        return lambda: os.sched_setaffinity(0, cores)

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self.servers, self.ports = [], []

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far: by the web tier (gunicorn's masters and workers, and nginx's),
        by PostgreSQL's processes, and by the whole machine (all but idle, I/O wait and steal)."""
        masters = {server.pid for server in self.servers}
        web = database = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                text = stat.read_text()
                fields = text.rsplit(")", 1)[1].split()
                used = int(fields[11]) + int(fields[12])  # utime, stime
                if int(stat.parent.name) in masters or int(fields[1]) in masters:
                    web += used
                elif text.split("(", 1)[1].startswith("postgres"):
                    database += used
        user, nice, system, _idle, _iowait, irq, softirq = map(
            int, Path("/proc/stat").read_text().split()[1:8]
        )
        tick = os.sysconf("SC_CLK_TCK")
        machine = user + nice + system + irq + softirq
        return {"web": web / tick, "database": database / tick, "machine": machine / tick}

    def stored_answers(self, study: int) -> dict[str, list[str]]:
        conn = psycopg2.connect(self.db_url)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT p.id::text, a.label FROM studies_answer a "
                "JOIN studies_presentation p ON p.id = a.presentation_id WHERE p.study_id = %s",
                [study],
            )
            rows = cur.fetchall()
        conn.close()
        stored: dict[str, list[str]] = defaultdict(list)
        for presentation, label in rows:
            stored[presentation].append(label)
        return stored

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.var, ignore_errors=True)


# ---- The load generator ---------------------------------------------------------------------------
class Hosts:
    """Round robin over the web hosts, one request at a time."""

    def __init__(self, urls):
        self.urls, self.index, self.lock = urls, 0, threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.index = (self.index + 1) % len(self.urls)
            return self.urls[self.index]


class Response:
    def __init__(self, status_code: int, headers: dict, content: bytes, url: str):
        self.status_code, self.headers, self.content, self.url = status_code, headers, content, url

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self):
        if self.status_code >= 400:
            raise RuntimeError(f"{self.status_code} for {self.url}: {self.content[:200]!r}")


class Browser:
    """A reader's browser in the load generator: its cookies, and one connection per host.

    The standard library's http.client rather than `requests`: a third of the CPU per
    request, so that the generator, on the same two cores as the servers, takes less of
    what it measures. Follows redirects of GETs, keeps cookies by name.
    """

    def __init__(self):
        self.cookies: dict[str, str] = {}
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def request(self, method, url, *, data=None, headers=None, allow_redirects=True, timeout=30):
        parts = urlparse(url)
        body = urlencode(data).encode() if data is not None else None
        sent = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        sent.update(headers or {})
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection = self.connections.pop(parts.netloc, None)
        if connection is not None:
            try:
                connection.request(method, target, body, sent)
                res = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the kept-alive connection while it was idle (between
                # phases): a browser sends the request again on a new one, and so does this.
                connection.close()
                connection = None
        if connection is None:
            connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
            try:
                connection.request(method, target, body, sent)
                res = connection.getresponse()
            except (OSError, http.client.HTTPException):
                connection.close()
                raise
        try:
            content = res.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        if res.will_close:
            connection.close()
        else:
            self.connections[parts.netloc] = connection
        for name, value in res.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        response = Response(res.status, dict(res.getheaders()), content, url)
        if (
            allow_redirects
            and method == "GET"
            and res.status in (301, 302, 303)
            and res.getheader("Location")
        ):
            return self.request(
                "GET", urljoin(url, res.getheader("Location")), headers=headers, timeout=timeout
            )
        return response


class Reader:
    """One reader's browser: a session with its cookies, and where the page is."""

    CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')
    FORM_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

    def __init__(self, username, study, hosts):
        self.username, self.study, self.hosts = username, study, hosts
        self.http = Browser()
        self.token = ""
        self.state = None
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.run = None  # the phase being driven, which records the times

    def timed(self, kind, method, path, **kwargs):
        for attempt in range(20):
            start = time.perf_counter()
            try:
                res = self.http.request(method, self.hosts.next() + path, timeout=30, **kwargs)
            except (OSError, http.client.HTTPException):
                res = None
            took = time.perf_counter() - start
            if res is not None and res.status_code < 500:
                if self.run:
                    self.run.record(kind, took)
                res.raise_for_status()
                return res
            self.errors += 1  # sent again, as the page does
            time.sleep(min(0.1 * 2**attempt, 2))
        raise RuntimeError(f"{self.username}: {kind} {path} kept failing")

    def log_in(self):
        page = self.timed("login", "GET", "/accounts/login/")
        token = self.FORM_CSRF.search(page.text).group(1)
        data = {"username": self.username, "password": PASSWORD, "csrfmiddlewaretoken": token}
        res = self.timed("login", "POST", "/accounts/login/", data=data, allow_redirects=False)
        if res.status_code != 302:
            raise RuntimeError(f"{self.username} could not log in ({res.status_code})")
        self.load_page()

    def load_page(self):
        page = self.timed("page", "GET", f"/study/{self.study}/")
        if page.url.rstrip("/").endswith("/done"):  # every image answered: the page sends the reader on
            self.state = {"current": None, "next": None, "done": True}
            return
        self.token = self.CSRF.search(page.text).group(1)
        self.state = self.timed("state", "GET", f"/study/{self.study}/state").json()
        for item in (self.state["current"], self.state["next"]):
            if item:
                self.timed("image", "GET", item["image"])

    def answer(self):
        current = self.state["current"]
        label = random.choice(["real", "fake", "unsure"])
        res = self.timed(
            "answer",
            "POST",
            f"/p/{current['id']}/answer",
            data={"label": label, "viewing_ms": str(random.randint(800, 4000))},
            headers={"X-CSRFToken": self.token, "Accept": "application/json"},
        )
        self.state = res.json()
        self.acked[current["id"]] = label
        self.run.answered()
        if self.state["next"]:
            self.timed("image", "GET", self.state["next"]["image"])

    def loop(self, run):
        self.run = run
        pace = run.pace
        due = time.monotonic() + (random.uniform(0, pace) if pace else 0)
        # A reload after a random number of answers, --reload-every on average: readers who
        # started together do not all reload the page in the same second.
        gap = (lambda: random.randint(1, 2 * run.reload_every - 1)) if run.reload_every else None
        count, reload_at = 0, gap() if gap else None
        while not run.stop.is_set() and self.state["current"]:
            if pace:
                wait = due - time.monotonic()
                if wait > 0 and run.stop.wait(wait):
                    break
                due += pace
            self.answer()
            count += 1
            if reload_at and count >= reload_at:
                self.load_page()
                reload_at = count + gap()
        self.run = None


class Run:
    """One phase: its pace, and the times and answers recorded while it is measured."""

    def __init__(self, pace: float, reload_every: int):
        self.pace, self.reload_every = pace, reload_every
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.answers = 0
        self.measuring = False

    def record(self, kind, seconds):
        if self.measuring:
            with self.lock:
                self.times[kind].append(seconds)

    def answered(self):
        if self.measuring:
            with self.lock:
                self.answers += 1


def in_threads(function, items):
    threads = [threading.Thread(target=function, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drive(readers, *, pace, duration, reload_every, warmup, cpu) -> dict:
    run = Run(pace, reload_every)
    driver = threading.Thread(target=in_threads, args=(lambda reader: reader.loop(run), readers), daemon=True)
    errors = sum(reader.errors for reader in readers)
    driver.start()
    time.sleep(warmup)
    cpu0, server0 = time.process_time(), cpu()
    run.measuring = True
    started = time.monotonic()
    time.sleep(duration)
    run.measuring = False
    elapsed = time.monotonic() - started
    generator, server = time.process_time() - cpu0, {k: v - server0[k] for k, v in cpu().items()}
    run.stop.set()
    driver.join()
    return {
        "answers_per_s": run.answers / elapsed,
        "times": dict(run.times),
        "errors": sum(reader.errors for reader in readers) - errors,
        "generator_cpu": generator / elapsed,
        "server_ms_per_answer": 1000 * server["web"] / max(run.answers, 1),
        "database_ms_per_answer": 1000 * server["database"] / max(run.answers, 1),
        # Less the load generator's own CPU: what serving an answer costs the machine.
        "machine_ms_per_answer": 1000 * (server["machine"] - generator) / max(run.answers, 1),
        "finished_readers": sum(1 for reader in readers if not reader.state["current"]),
    }


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def median(values):
    return percentile(values, 50)


class Measured:
    """A target under load: its servers, its logged-in readers, and what the rounds measured."""

    def __init__(self, target: Target, args):
        self.target, self.args = target, args
        print(f"[{target.name}] setting up database {target.db_name} and seeding...", flush=True)
        seeded = target.setup()
        self.study = seeded["study"]
        urls = target.start(args.hosts, args.workers)
        print(f"[{target.name}] gunicorn at {', '.join(urls)} ({args.workers} workers each)", flush=True)
        hosts = Hosts(urls)
        self.readers = [Reader(name, self.study, hosts) for name in seeded["readers"]]
        in_threads(Reader.log_in, self.readers)
        self.realistic: list[dict] = []
        self.saturation: list[dict] = []

    def round(self) -> None:
        args = self.args
        if args.duration:
            self.realistic.append(
                drive(
                    self.readers[: args.readers],
                    pace=args.pace,
                    duration=args.duration,
                    reload_every=args.reload_every,
                    warmup=args.pace + 1,
                    cpu=self.target.cpu_seconds,
                )
            )
        if args.saturation_duration:
            self.saturation.append(
                drive(
                    self.readers[: args.saturation_readers],
                    pace=0,
                    duration=args.saturation_duration,
                    reload_every=args.reload_every,
                    warmup=3,
                    cpu=self.target.cpu_seconds,
                )
            )

    def finish(self) -> dict:
        self.target.stop()
        acked: dict[str, str] = {}
        for reader in self.readers:
            acked.update(reader.acked)
        stored = self.target.stored_answers(self.study)
        result = {
            "check": {
                "acked": len(acked),
                "stored": sum(map(len, stored.values())),
                "lost": sum(1 for p in acked if p not in stored),
                "doubled": sum(1 for labels in stored.values() if len(labels) > 1),
                "wrong_label": sum(1 for p, label in acked.items() if p in stored and stored[p][0] != label),
                "unacknowledged": sum(1 for p in stored if p not in acked),
            }
        }
        if self.realistic:
            times = defaultdict(list)
            for phase in self.realistic:
                for kind, values in phase["times"].items():
                    times[kind] += values
            result["realistic"] = {
                "answers_per_s": median([phase["answers_per_s"] for phase in self.realistic]),
                "errors": sum(phase["errors"] for phase in self.realistic),
                "generator_cpu": max(phase["generator_cpu"] for phase in self.realistic),
                "times": dict(times),
            }
        if self.saturation:
            result["saturation"] = {
                "rounds": [phase["answers_per_s"] for phase in self.saturation],
                "answers_per_s": median([phase["answers_per_s"] for phase in self.saturation]),
                "server_ms_per_answer": median([phase["server_ms_per_answer"] for phase in self.saturation]),
                "database_ms_per_answer": median(
                    [phase["database_ms_per_answer"] for phase in self.saturation]
                ),
                "machine_ms_per_answer": median(
                    [phase["machine_ms_per_answer"] for phase in self.saturation]
                ),
                "answer_p95": median(
                    [percentile(phase["times"].get("answer", []), 95) for phase in self.saturation]
                ),
                "errors": sum(phase["errors"] for phase in self.saturation),
                "generator_cpu": max(phase["generator_cpu"] for phase in self.saturation),
                "finished_readers": self.saturation[-1]["finished_readers"],
            }
        return result


def print_summary(name: str, result: dict, args) -> None:
    print(f"\n== {name} ==")
    if "realistic" in result:
        r = result["realistic"]
        print(
            f"realistic: {args.readers} readers, pace {args.pace} s, "
            f"{args.rounds} x {args.duration} s measured: "
            f"{r['answers_per_s']:.1f} answers/s, {r['errors']} requests sent again, "
            f"load generator at most {r['generator_cpu']:.2f} CPU"
        )
        print("| request | n | p50 ms | p95 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
        for kind in KINDS:
            values = r["times"].get(kind, [])
            print(
                f"| {kind} | {len(values)} | {percentile(values, 50) * 1000:.1f} | "
                f"{percentile(values, 95) * 1000:.1f} | {percentile(values, 99) * 1000:.1f} |"
            )
    if "saturation" in result:
        s = result["saturation"]
        rounds = ", ".join(f"{value:.1f}" for value in s["rounds"])
        print(
            f"saturation: {args.saturation_readers} readers, {args.rounds} x {args.saturation_duration} s: "
            f"**{s['answers_per_s']:.1f} answers/s** (median; rounds {rounds}), answer p95 "
            f"{s['answer_p95'] * 1000:.0f} ms, CPU per answer (and its image): web "
            f"{s['server_ms_per_answer']:.1f} ms, PostgreSQL {s['database_ms_per_answer']:.1f} ms, "
            f"machine {s['machine_ms_per_answer']:.1f} ms; {s['errors']} requests sent again, "
            f"load generator at most {s['generator_cpu']:.2f} CPU, "
            f"{s['finished_readers']} readers ran out of images"
        )
    c = result["check"]
    failed = c["lost"] or c["doubled"] or c["wrong_label"] or c["unacknowledged"]
    print(
        f"check: {'FAILED' if failed else 'OK'}: {c['acked']} answers acknowledged, {c['stored']} stored, "
        f"{c['lost']} lost, {c['doubled']} doubled, {c['wrong_label']} with another label, "
        f"{c['unacknowledged']} stored unacknowledged"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        seed(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, default=50, help="readers of the realistic phase")
    parser.add_argument("--pace", type=float, default=2.0, help="seconds between a reader's answers")
    parser.add_argument(
        "--duration", type=float, default=20, help="seconds measured per round, realistic (0: skip)"
    )
    parser.add_argument("--saturation-readers", type=int, default=50)
    parser.add_argument("--saturation-duration", type=float, default=15, help="seconds per round (0: skip)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, alternating between the trees compared"
    )
    parser.add_argument("--reload-every", type=int, default=10, help="answers between page reloads")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers per host")
    parser.add_argument("--hosts", type=int, default=1, help="gunicorn instances; requests go round robin")
    parser.add_argument(
        "--cores-per-host",
        type=int,
        default=0,
        help="pin each gunicorn host to this many cores of its own (0: no pinning)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="gunicorn's gthread workers with this many threads (0: its sync workers, as deploy/run)",
    )
    parser.add_argument(
        "--nginx", action="store_true", help="nginx in front of the hosts, sending the images (needs nginx)"
    )
    parser.add_argument("--images", type=int, default=400, help="images in the study: each reader's sequence")
    parser.add_argument("--database", help="database to recreate (default: DATABASE_URL's name + '_bench')")
    parser.add_argument(
        "--cache-url",
        default=os.environ.get("CACHE_URL", ""),
        help="CACHE_URL of the servers (the --compare revision gets the next Redis database)",
    )
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision, rounds interleaved")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.readers_needed = max(args.readers, args.saturation_readers)

    worktree = None
    targets: list[Target] = []
    try:
        if args.compare:
            worktree = Path(tempfile.mkdtemp(prefix="labelling-rev-")) / "tree"
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(worktree), args.compare],
                cwd=ROOT,
                check=True,
            )
            targets.append(Target(worktree, f"revision {args.compare}", args, suffix="_base"))
        targets.append(Target(ROOT, "working tree", args))
        measured = [Measured(target, args) for target in targets]
        for number in range(args.rounds):
            # ABBA: neither tree always runs first, when the machine may be quieter or busier.
            order = measured if number % 2 == 0 else measured[::-1]
            for item in order:
                print(f"[{item.target.name}] round {number + 1} of {args.rounds}", flush=True)
                item.round()
        results = {item.target.name: item.finish() for item in measured}
    finally:
        for target in targets:
            target.cleanup()
        if worktree:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    for name, result in results.items():
        print_summary(name, result, args)
    if len(measured) == 2:
        (base_name, base), (new_name, new) = results.items()
        print(f"\n== {new_name} / {base_name} ==")
        if "saturation" in base:
            pairs = zip(base["saturation"]["rounds"], new["saturation"]["rounds"], strict=True)
            per_round = [n / b for b, n in pairs]
            for key, what in (("server", "web"), ("database", "PostgreSQL"), ("machine", "machine")):
                ratio = new["saturation"][f"{key}_ms_per_answer"] / base["saturation"][f"{key}_ms_per_answer"]
                print(f"{what} CPU per answer: {ratio:.2f}x")
            print(
                f"saturation answers/s: {median(per_round):.2f}x "
                f"(median of the rounds' ratios {', '.join(f'{r:.2f}' for r in per_round)})"
            )
        if "realistic" in base:
            for kind in KINDS:
                b = percentile(base["realistic"]["times"].get(kind, []), 95)
                n = percentile(new["realistic"]["times"].get(kind, []), 95)
                print(f"realistic p95 {kind}: {b * 1000:.1f} ms -> {n * 1000:.1f} ms")
    if args.json:
        for result in results.values():
            if "realistic" in result:
                result["realistic"]["times"] = {
                    kind: {f"p{q}": percentile(values, q) for q in (50, 95, 99)} | {"n": len(values)}
                    for kind, values in result["realistic"]["times"].items()
                }
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
