"""The monitoring tests' fleet: real workers (and the operator when a Kubernetes API is at hand) with
real traffic, scraped by a real Prometheus. Started once per session, for the dashboard and the log
tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest

from tests.monitoring.fleet import (
    PLATFORM,
    STREAM_SPEC,
    Fleet,
    api_traffic,
    chat_traffic,
    stream_traffic,
    target,
    wait_for_scrapes,
    wait_for_targets,
)
from tests.monitoring.support import prometheus_binary
from tests.support.audio import sine
from tests.support.chat import ISSUER, Chat
from tests.support.db import fresh_database
from tests.support.kube import KubeCluster
from tests.support.operator import REPO, OperatorProcess, room
from tests.support.process import VezaProcess
from tests.support.stream import BUCKET
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_local.controlplane import wait_for
from veza_local.prometheus import PrometheusService
from veza_local.services import NatsService, PostgresService, RedisService, S3Service


def _bucket(s3: S3Service) -> None:
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="tests/a440.mp3", Body=sine(440, 2.0, "mp3", title="Tone A"))
    client.put_object(Bucket=BUCKET, Key="tests/b880.ogg", Body=sine(880, 2.0, "ogg", title="Tone B"))


def _operator(kube: KubeCluster, log: Path) -> OperatorProcess:
    """The operator (cluster-admin credentials, one namespace watched) after reconciling a ChatRoom."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{p.name.removesuffix('.yaml')}" for p in (REPO / "crds").glob("*.yaml")])
    ns = kube.create_namespace("mon")
    operator = OperatorProcess(kube.kubeconfig, log, peering=None, namespaces=[ns]).start()
    try:
        kube.apply(room(ns, "lobby"), namespace=ns)  # its platform does not exist: reconciled all the same
        wait_for(lambda: operator.reconciles() > 0, timeout=30, interval=0.2, message="a reconcile")
    except BaseException:
        operator.stop()
        raise
    return operator


@pytest.fixture(scope="session")
async def fleet(postgres: PostgresService, nats: NatsService, redis: RedisService, s3: S3Service, kube: KubeCluster,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    prometheus_binary("prometheus")  # skips before anything starts when it was not built
    tmp = tmp_path_factory.mktemp("fleet")
    keys = tmp / "jwt"
    keys.mkdir()
    key = generate_signing_key()
    for name, content in secret_data([key]).items():
        (keys / name).write_text(content)
    issuer = TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)
    s3_env = {"VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": BUCKET, "AWS_ACCESS_KEY_ID": s3.access_key,
              "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    database, _ = await asyncio.gather(fresh_database(postgres, "mon"), asyncio.to_thread(_bucket, s3))

    stream = VezaProcess("stream", {"VEZA_COMPONENT": "stream", "VEZA_PLATFORM": PLATFORM,
                                    "VEZA_RESOURCE_NAME": "radio", "VEZA_RESOURCE_SPEC": json.dumps(STREAM_SPEC),
                                    "VEZA_SHUTDOWN_GRACE_SECONDS": "2", **s3_env}, tmp / "stream.log",
                        probe="/readyz")
    api = VezaProcess("api", {"VEZA_PLATFORM": PLATFORM, "VEZA_DATABASE_URL": database, "VEZA_REDIS_URL": redis.url,
                              "VEZA_JWT_ISSUER": ISSUER, "VEZA_JWT_KEYS_DIR": str(keys),
                              "VEZA_MAIL_DIR": str(tmp / "mail"), "VEZA_PUBLIC_URL": "https://veza.test",
                              "VEZA_ARGON2_MEMORY_KIB": "8192", "VEZA_ARGON2_TIME_COST": "1",
                              "VEZA_SHUTDOWN_GRACE_SECONDS": "1", **s3_env}, tmp / "api.log", probe="/readyz")
    chat = Chat(tmp, keys, issuer, {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": nats.url,
                                    "VEZA_REDIS_URL": redis.url})
    prometheus: PrometheusService | None = None
    operator: OperatorProcess | None = None
    try:
        operator, *_ = await asyncio.gather(asyncio.to_thread(_operator, kube, tmp / "operator.log"),
                                            asyncio.to_thread(stream.start), asyncio.to_thread(api.start))
        chat_worker = await chat.worker()
        prometheus = PrometheusService(tmp, [
            target("chat", chat_worker.port), target("stream", stream.port), target("api", api.port),
            target("operator", operator.metrics_port, job="veza-operator", namespace="veza-system")]).start()
        await asyncio.to_thread(wait_for_targets, prometheus)  # a first sample before the traffic
        await asyncio.gather(chat_traffic(chat, chat_worker), stream_traffic(stream, "radio", 3.0), api_traffic(api))
        await asyncio.to_thread(wait_for_scrapes, prometheus)
        yield Fleet(prometheus, {"chat": chat.workers[0].log_path, "stream": stream.log_path, "api": api.log_path,
                                 "operator": operator.log_path})
    finally:
        if operator is not None:
            operator.stop()
        if prometheus is not None:
            prometheus.stop()
        await chat.close()
        stream.stop()
        api.stop()

