"""Stream worker fixtures: tracks in the shared S3, worker processes started with `veza stream`
(helpers in tests/support/stream.py and tests/support/audio.py)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.audio import sine
from tests.support.process import VezaProcess
from tests.support.stream import BUCKET
from veza_local.services import S3Service


@pytest.fixture(scope="session")
def bucket(s3: S3Service) -> Any:
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def tracks(bucket: Any) -> None:
    """The two tracks tests.support.stream.PLAYLIST_SPEC plays."""
    bucket.put_object(Bucket=BUCKET, Key="tests/a440.mp3", Body=sine(440, 2.0, "mp3", title="Tone A"))
    bucket.put_object(Bucket=BUCKET, Key="tests/b880.ogg", Body=sine(880, 2.0, "ogg", title="Tone B"))


@pytest.fixture
def start_worker(s3: S3Service, bucket: Any, tmp_path: Path) -> Iterator[Callable[..., VezaProcess]]:
    """Start `veza stream` for a channel spec; extra env overrides; every worker is stopped at the end."""
    started: list[VezaProcess] = []

    def start(channel: str, spec: dict[str, Any], **env: str) -> VezaProcess:
        base = {
            "VEZA_COMPONENT": "stream", "VEZA_PLATFORM": f"t{os.getpid()}",
            "VEZA_RESOURCE_NAME": channel, "VEZA_RESOURCE_SPEC": json.dumps(spec),
            "VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "VEZA_SHUTDOWN_GRACE_SECONDS": "2", "VEZA_LOG_LEVEL": "INFO",
        }
        worker = VezaProcess("stream", {**base, **env}, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
