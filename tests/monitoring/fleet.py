"""Real Veza processes with real traffic, scraped by a real Prometheus: a chat worker (two clients, a
message sent and delivered, a malformed frame refused), a stream worker (a playlist on air, a
listener, one refused by the listener limit), an API worker (a registration and a login) and, when a
Kubernetes API is at hand, the operator (a ChatRoom reconciled). Each process writes its JSON log
to its own file."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.chat import Chat, ChatWorker
from tests.support.process import VezaProcess
from tests.support.stream import PLAYLIST_SPEC, open_stream, read_body
from veza_local.controlplane import wait_for
from veza_local.prometheus import PrometheusService, ScrapeTarget

NAMESPACE = "veza-test"  # what the PodMonitor's `namespace` label would say
PLATFORM = "mon"


@dataclass
class Fleet:
    prometheus: PrometheusService
    logs: dict[str, Path] = field(default_factory=dict)  # component -> the file its process logged to


def target(component: str, port: int, *, job: str = "veza-workers", namespace: str = NAMESPACE) -> ScrapeTarget:
    """What the chart's PodMonitor (or, for the operator, ServiceMonitor) would attach to the series."""
    return ScrapeTarget(job, f"127.0.0.1:{port}", {"namespace": namespace, "pod": f"{component}-0",
                                                  "component": component, "platform": PLATFORM})


async def chat_traffic(chat: Chat, worker: ChatWorker) -> None:
    """Two members, a message (ack, commit, fan-out, delivery) and a malformed frame refused."""
    alice = await chat.connect(worker, "alice")
    bob = await chat.connect(worker, "bob")
    await alice.send({"type": "send", "cid": "c1", "text": "hello"})
    await alice.expect("ack", cid="c1")
    await bob.expect("event", seq=1)
    await bob.ws.send_str(json.dumps({"type": "send", "cid": "c2"}))  # no text: an error frame
    await bob.expect("error")


async def stream_traffic(worker: VezaProcess, channel: str, seconds: float) -> None:
    """One listener for `seconds` (the playlist plays, HLS segments are cut); a second one is refused
    by the listener limit."""
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, f"/stream/{channel}/mp3")
    assert status == 200, status
    try:
        await asyncio.sleep(0.5)
        refused, _, refused_reader, refused_writer = await open_stream("127.0.0.1", worker.port,
                                                                         f"/stream/{channel}/aac")
        assert refused == 503, refused
        await refused_reader.read()
        refused_writer.close()
        body = await read_body(reader, headers, 10**9, seconds)
        assert body, "the listener got no audio"
    finally:
        writer.close()


async def api_traffic(api: VezaProcess) -> None:
    """A registration and a login (of an address not confirmed yet: refused, a real answer all the same)."""
    email = f"user-{uuid.uuid4().hex[:8]}@veza.test"
    async with aiohttp.ClientSession() as http:
        async with http.post(api.url + "/api/v1/auth/register",
                             json={"email": email, "password": "correct horse battery staple",
                                   "display_name": "Mon"}) as resp:
            assert resp.status == 202, await resp.text()
        async with http.post(api.url + "/api/v1/auth/login",
                             json={"email": email, "password": "correct horse battery staple"}) as resp:
            assert resp.status in (200, 401, 403), await resp.text()
        async with http.get(api.url + "/api/v1/nowhere") as resp:
            assert resp.status == 404


def wait_for_targets(prometheus: PrometheusService, timeout: float = 30.0) -> None:
    """Until every target answered a scrape."""
    def scraped() -> bool:
        health = prometheus.healthy_targets()
        return len(health) == len(prometheus.targets) and all(h == "up" for h in health.values())

    wait_for(scraped, timeout, interval=0.2, message="every target scraped")


def wait_for_scrapes(prometheus: PrometheusService, count: int = 3, timeout: float = 30.0) -> None:
    """Until every target answered `count` scrapes since now (so rate() over them sees the traffic)."""
    wait_for_targets(prometheus, timeout)
    since = time.time()
    interval = float(prometheus.scrape_interval.removesuffix("s"))

    def enough() -> bool:
        samples = prometheus.query(f"count_over_time(up[{int(time.time() - since) + 1}s])")
        return len(samples) == len(prometheus.targets) and all(float(s["value"][1]) >= count for s in samples)

    time.sleep(count * interval)
    wait_for(enough, timeout, interval=0.2, message=f"{count} scrapes of every target")


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file, parsed (a line that is not a JSON object fails the test)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line[:300]}") from None
        assert isinstance(entry, dict), f"{path.name}:{number} is not a JSON object: {line[:300]}"
        out.append(entry)
    return out


STREAM_SPEC: dict[str, Any] = {**PLAYLIST_SPEC, "limits": {"maxListeners": 1}}
