"""Separate hosts on one machine: network namespaces joined by a bridge, for the multi-host test.

Each host is a network namespace of its own (`ip netns`), with one veth link to a
bridge in the machine's own namespace, its own working folder (VAR_DIR, model
cache, temporary files, HOME) and no path in common with another host. The services
(PostgreSQL, the broker, the S3 server) listen on the machine's 127.0.0.1, which no
host can reach: a small forwarder on the bridge's address is the only way to them,
over the links, as a service on another machine would be. Stopping a forwarder cuts
every host off that service; killing a host's processes is a host that dies.

`python -m tests.hosts forward ADDRESS PORT [PORT...]` is that forwarder.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.seaweedfs import answers

ROOT = Path(__file__).resolve().parent.parent


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    address: str
    folder: Path
    network: "Network"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.network.namespace(self.name)

    def environment(self, **extra: str) -> dict[str, str]:
        """What a host of a deployment sets: its own folders, the shared settings, nothing else."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.folder / "home"),
            "TMPDIR": str(self.folder / "tmp"),
            "VAR_DIR": str(self.folder / "var"),
            "MEDIA_ROOT": str(self.folder / "var" / "media"),  # unused: files go to the S3 server
            "MODEL_CACHE_DIR": str(self.folder / "model-cache"),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **self.network.settings,
            **extra,
        }
        for key in ("HOME", "TMPDIR", "VAR_DIR", "MODEL_CACHE_DIR"):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        return env

    def start(self, role: str, **extra: str) -> subprocess.Popen:
        """`deploy/run ROLE` inside this host's namespace, logging to its folder."""
        log = open(self.folder / f"{role}.log", "ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, str(ROOT / "deploy" / "run"), role],
            cwd=ROOT,
            env=self.environment(**extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[role] = process
        return process

    def run(self, role: str, timeout: float = 300, **extra: str) -> str:
        process = self.start(role, **extra)
        if process.wait(timeout=timeout) != 0:
            raise RuntimeError(f"{self.name}: deploy/run {role} failed:\n{self.log(role)}")
        return self.log(role)

    def manage(self, *args: str, timeout: float = 300) -> str:
        """`manage.py ...` on this host, as an operator would run it there."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            command = " ".join(args)
            raise RuntimeError(f"{self.name}: manage.py {command} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def log(self, role: str) -> str:
        path = self.folder / f"{role}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def kill(self) -> None:
        """The host dies: every process in its namespace gets SIGKILL at once, without a word."""
        pids = sh("ip", "netns", "pids", self.namespace, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class Network:
    """A bridge with the machine at .1 and a host at each further address; forwarders to the services."""

    def __init__(self, root: Path, *, prefix: str = "rs", subnet: str = "10.77.0"):
        self.root = root
        self.prefix = prefix
        self.subnet = subnet
        self.bridge = f"{prefix}br0"
        self.gateway = f"{subnet}.1"
        self.hosts: dict[str, Host] = {}
        self.forwarders: dict[int, subprocess.Popen] = {}
        self.settings: dict[str, str] = {}

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def create(self) -> "Network":
        self.destroy()  # what a run that died left behind
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 10
        namespace, veth = self.namespace(name), f"v{self.prefix}{name}"[:15]
        sh("ip", "netns", "add", namespace)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        inside = ("ip", "netns", "exec", namespace)
        sh(*inside, "ip", "addr", "add", f"{self.subnet}.{number}/24", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        host = Host(name, f"{self.subnet}.{number}", folder, self)
        self.hosts[name] = host
        return host

    def forward(self, *ports: int) -> None:
        """Make the machine's services on these ports reachable from the hosts at the bridge's address."""
        for port in ports:
            self.forwarders[port] = subprocess.Popen(
                [sys.executable, "-m", "tests.hosts", "forward", self.gateway, str(port)],
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        for port in ports:
            while not answers(self.gateway, port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the forwarder to port {port} did not start")
                time.sleep(0.1)

    def cut(self, port: int) -> None:
        """Every host loses this service (its forwarder stops); `forward` brings it back.

        What the hosts see is what a restart of the service shows them: their connections
        dropped at once, new ones refused until it is back. The service itself keeps
        running, with whatever it holds, for this machine and other sessions.
        """
        process = self.forwarders.pop(port)
        process.kill()
        process.wait()

    @contextlib.contextmanager
    def down(self, port: int):
        """The service is cut off for as long as the block runs, and back after it."""
        self.cut(port)
        try:
            yield
        finally:
            self.forward(port)

    def outage(self, port: int, seconds: float) -> "threading.Thread":
        """Cut the service now and bring it back after `seconds`, in the background; join to wait."""
        self.cut(port)

        def back():
            time.sleep(seconds)
            self.forward(port)

        thread = threading.Thread(target=back, name=f"outage-{port}", daemon=True)
        thread.start()
        return thread

    def destroy(self) -> None:
        for host in self.hosts.values():
            host.stop()
        for process in self.forwarders.values():
            process.kill()
            process.wait()
        self.forwarders.clear()
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{self.prefix}-"):
                for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        self.hosts.clear()


# --- The forwarder ----------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _forward(address: str, port: int) -> None:
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, address, port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "forward":
        sys.exit("usage: python -m tests.hosts forward ADDRESS PORT [PORT...]")

    async def main():
        await asyncio.gather(*(_forward(sys.argv[2], int(p)) for p in sys.argv[3:]))

    asyncio.run(main())


# --- A client of the web hosts, as a browser behind nginx would be ----------------------


class HttpClient:
    """Cookies, CSRF and form posts over plain HTTP to a web host, as if TLS ended at nginx.

    It says `X-Forwarded-Proto: https` and sends the `Secure` cookies, which is what
    nginx and the browser do between them in the README's production outline.
    """

    def __init__(self, base_url: str):
        import http.cookiejar
        import urllib.request

        class BehindTLS(http.cookiejar.DefaultCookiePolicy):
            def return_ok_secure(self, cookie, request):
                return True

        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar(policy=BehindTLS())
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next((c.value for c in self.jar if c.name == name), "")

    def request(self, method: str, path: str, *, data: bytes | None = None, headers=None, timeout=60):
        import urllib.error
        import urllib.request

        host = self.base_url.split("://", 1)[1]
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "X-Forwarded-Proto": "https",
                "Origin": f"https://{host}",
                "Referer": f"https://{host}{path}",
                **(headers or {}),
            },
        )
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, fields: dict, files: dict[str, list[tuple[str, bytes]]] | None = None, **kw):
        """A form post with the CSRF token (multipart when there are files)."""
        import secrets
        import urllib.parse

        fields = {"csrfmiddlewaretoken": self.cookie("csrftoken"), **fields}
        if not files:
            body = urllib.parse.urlencode(fields).encode()
            kind = "application/x-www-form-urlencoded"
        else:
            boundary = secrets.token_hex(16)
            parts = []
            for name, value in fields.items():
                head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                parts.append(head.encode() + str(value).encode() + b"\r\n")
            for name, uploads in files.items():
                for filename, content in uploads:
                    head = (
                        f"--{boundary}\r\nContent-Disposition: form-data; "
                        f'name="{name}"; filename="{filename}"\r\n'
                        "Content-Type: application/octet-stream\r\n\r\n"
                    )
                    parts.append(head.encode() + content + b"\r\n")
            parts.append(f"--{boundary}--\r\n".encode())
            body, kind = b"".join(parts), f"multipart/form-data; boundary={boundary}"
        headers = {"Content-Type": kind, "X-CSRFToken": self.cookie("csrftoken"), **kw.pop("headers", {})}
        return self.request("POST", path, data=body, headers=headers, **kw)

    def log_in_reply(self, username: str, password: str, *, admin: bool = False):
        """One try at logging in: the login page's reply where it failed on the server's side,
        else the reply to the form (a 302 and a session cookie where it worked)."""
        path = "/admin/login/" if admin else "/accounts/login/"
        status, headers, body = self.get(path)
        if status >= 500:
            return status, headers, body
        return self.post(path, {"username": username, "password": password, "next": "/"})

    def log_in(self, username: str, password: str, *, admin: bool = False) -> None:
        status, _, body = self.log_in_reply(username, password, admin=admin)
        self.check_logged_in(username, status, body)

    def check_logged_in(self, username: str, status: int, body: bytes) -> None:
        if status not in (200, 302) or not self.cookie("sessionid"):
            raise RuntimeError(f"could not log in as {username} ({status}): {body[:300]!r}")


# --- A deployment on those hosts: what the multi-host test and benchmarks/hosts.py run ---------

BROKERS = {
    "rabbitmq": (5672, "amqp://guest:guest@{host}:5672//"),
    "redis": (6379, "redis://{host}:6379/9"),
}


class OwnRedis:
    """A redis-server of the run's own, on a port of its own, keeping nothing on disk (no RDB, no
    AOF), as Redis is often deployed: a restart of it loses every message it held, queued or
    unacknowledged. The machine's Redis serves other sessions and is never restarted."""

    def __init__(self, folder: Path):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> "OwnRedis":
        settings = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", *settings, "--dir", str(self.folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not answers("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Killed, as a crash or an OOM kill would: it saves nothing on the way out either."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, *, after: float = 1.0) -> None:
        self.stop()
        time.sleep(after)
        self.start()


class Deployment:
    """A web host, GPU-worker hosts and an operations host (default worker and beat), as the
    README's production outline has them, against this machine's services."""

    def __init__(
        self,
        network: Network,
        *,
        broker: str,
        database: str,
        storage_url: str,
        own_redis: OwnRedis | None = None,
        **settings: str,
    ):
        import secrets

        port, url = BROKERS[broker]
        if own_redis:  # the broker is a Redis of the run's own, which it may restart
            port, url = own_redis.port, f"redis://{{host}}:{own_redis.port}/0"
        # PostgreSQL, the broker, Redis for the web hosts' shared cache (sessions), the S3 server.
        network.forward(*sorted({5432, port, 6379, 18333}))
        self.network = network
        self.broker, self.broker_port, self.own_redis = broker, port, own_redis
        self.acknowledged: dict[str, str] = {}  # every answer a web host acknowledged: presentation -> label
        self.retries = 0  # requests the readers sent again after a 5xx, a 429 or a connection error
        network.settings = {
            "DJANGO_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": f"postgres://postgres@{network.gateway}:5432/{database}",
            "CELERY_BROKER_URL": url.format(host=network.gateway),
            "STORAGE_URL": storage_url.replace("127.0.0.1", network.gateway),
            "CACHE_URL": f"redis://{network.gateway}:6379/8",
            **settings,
        }
        self.web: list[Host] = []
        self.gpu: list[Host] = []
        self.ops: Host | None = None

    def start(self, *, web_hosts: int = 1, gpu_hosts: int = 2, web_workers: int = 2) -> "Deployment":
        self.web = [self.network.add_host(f"web{i + 1}") for i in range(web_hosts)]
        self.gpu = [self.network.add_host(f"gpu{i + 1}") for i in range(gpu_hosts)]
        self.ops = self.network.add_host("ops")
        self.network.settings["ALLOWED_HOSTS"] = ",".join(h.address for h in self.web)
        self.web[0].run("migrate")
        for host in self.web:
            host.start("web", BIND=f"{host.address}:8000", WEB_WORKERS=str(web_workers))
        for host in self.gpu:
            host.start("gpu-worker", WORKER_NAME=f"gpu@{host.name}")
        self.ops.start("worker", WORKER_NAME="default@ops")
        self.ops.start("beat")
        return self

    @property
    def hosts(self) -> list[Host]:
        return [*self.web, *self.gpu, *([self.ops] if self.ops else [])]

    def url(self, index: int = 0) -> str:
        return f"http://{self.web[index].address}:8000"

    def wait_healthy(self, timeout: float = 180) -> dict:
        """Until every web host's /healthz is 200 (database, broker, storage, a worker): its checks."""
        import json

        deadline = time.monotonic() + timeout
        for index, host in enumerate(self.web):
            client = HttpClient(self.url(index))
            while True:
                try:
                    status, _, body = client.get("/healthz", timeout=10)
                    if status == 200:
                        checks = json.loads(body)["checks"]
                        break
                except OSError:
                    pass  # gunicorn not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host.name} is not healthy:\n{host.log('web')}")
                time.sleep(0.5)
        return checks

    def broker_fault(self, seconds: float) -> str:
        """The broker goes away for `seconds` and comes back; what happened, in words.

        A Redis of the run's own is killed and started again empty: every message it held is
        lost, as with a Redis that keeps nothing on disk. RabbitMQ is the machine's, shared
        with other sessions, and is not restarted: its link is cut instead. A RabbitMQ restart
        keeps what the hosts' durable queues hold (Celery's messages are persistent), so what
        the hosts see of one is what the cut shows them: their connections dropped, new ones
        refused, the unacknowledged messages handed out again once they are back.
        """
        if self.own_redis:
            self.own_redis.restart(after=seconds)
            return f"the broker (a Redis keeping nothing on disk) killed, restarted empty after {seconds:g} s"
        with self.network.down(self.broker_port):
            time.sleep(seconds)
        return f"the broker's link ({self.broker}, port {self.broker_port}) cut for {seconds:g} s"

    def client(self, username: str, password: str, *, admin: bool = False, index: int = 0) -> HttpClient:
        """A logged-in client; a login that meets an outage is tried again, as a person would."""
        client = HttpClient(self.url(index))
        status, _, body = self.patiently(client.log_in_reply, username, password, admin=admin)
        client.check_logged_in(username, status, body)
        return client

    # As static/js/label/server.js: its back-off, and the most of a server's Retry-After it waits.
    RETRY_DELAYS = (1, 2, 3, 5)
    RETRY_AFTER_MAX = 30

    def patiently(self, send, *args, **kwargs):
        """Send a request until it is answered with neither a 5xx, a 429 nor a connection error,
        as the labelling page does: the answer is kept and sent again after the server's
        Retry-After, or the page's back-off if that is longer. The reply."""
        for attempt in range(10_000):
            try:
                status, headers, body = send(*args, **kwargs)
                if status < 500 and status != 429:
                    return status, headers, body
                asked = headers.get("Retry-After", "0")
                retry_after = min(int(asked), self.RETRY_AFTER_MAX) if asked.isdigit() else 0
            except OSError:  # refused, reset, timed out: the page's fetch() TypeError
                retry_after = 0
            self.retries += 1
            time.sleep(max(self.RETRY_DELAYS[min(attempt, len(self.RETRY_DELAYS) - 1)], retry_after))
        raise RuntimeError("the server never came back")

    def label(self, study_id: int, readers: list[tuple[str, str]], *, pace: float = 0.0) -> dict[str, int]:
        """Each reader labels the whole study at once, over HTTP, as the labelling page does:
        the state, each image, each answer, each request sent again through an outage as the
        page does (`patiently`). Readers are spread over the web hosts. Every acknowledged
        answer is kept in `acknowledged`."""
        import json
        import threading

        totals: dict[str, int] = {}
        errors: list[str] = []

        def one(index: int, username: str, password: str) -> None:
            try:
                client = self.client(username, password, index=index % len(self.web))
                status, _, _ = self.patiently(client.get, f"/study/{study_id}/")
                state = json.loads(self.patiently(client.get, f"/study/{study_id}/state")[2])
                count = 0
                while not state["done"]:
                    current = state["current"]
                    status, _, image = self.patiently(client.get, current["image"])
                    if status != 200 or image[:4] != b"\x89PNG":
                        raise RuntimeError(f"image {current['image']}: {status}")
                    time.sleep(pace)
                    label = ("real", "fake")[count % 2]
                    status, _, body = self.patiently(
                        client.post,
                        f"/p/{current['id']}/answer",
                        {"label": label, "viewing_ms": 900},
                        headers={"Accept": "application/json"},
                    )
                    if status != 200:
                        raise RuntimeError(f"answer {current['id']}: {status} {body[:200]!r}")
                    self.acknowledged[current["id"]] = label
                    state = json.loads(body)
                    count += 1
                totals[username] = count
            except Exception as exc:  # reported below, with the reader's name
                errors.append(f"{username}: {exc!r}")

        threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        if errors:
            raise RuntimeError("; ".join(errors))
        return totals
