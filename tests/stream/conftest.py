"""Stream worker fixtures: tracks in the shared S3, worker processes started with `veza stream`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from veza_local.services import S3Service, free_port

ROOT = Path(__file__).resolve().parents[2]
VEZA = str(Path(sys.executable).parent / "veza")
BUCKET = "veza-stream-tests"


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([VEZA, "stream"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=0.5):  # noqa: S310 (http to loopback)
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"worker did not start: {self.log_path.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def bucket(s3: S3Service) -> Any:
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def tracks(bucket: Any) -> None:
    """The two tracks the playlist SPEC of test_playlist.py plays."""
    from tests.stream.audio import sine

    bucket.put_object(Bucket=BUCKET, Key="tests/a440.mp3", Body=sine(440, 2.0, "mp3", title="Tone A"))
    bucket.put_object(Bucket=BUCKET, Key="tests/b880.ogg", Body=sine(880, 2.0, "ogg", title="Tone B"))


@pytest.fixture
def start_worker(s3: S3Service, bucket: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `veza stream` for a channel spec; extra env overrides; every worker is stopped at the end."""
    started: list[WorkerProcess] = []

    def start(channel: str, spec: dict[str, Any], **env: str) -> WorkerProcess:
        base = {
            "VEZA_COMPONENT": "stream", "VEZA_PLATFORM": f"t{os.getpid()}",
            "VEZA_RESOURCE_NAME": channel, "VEZA_RESOURCE_SPEC": json.dumps(spec),
            "VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "VEZA_SHUTDOWN_GRACE_SECONDS": "2", "VEZA_LOG_LEVEL": "INFO",
        }
        worker = WorkerProcess({**base, **env}, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
