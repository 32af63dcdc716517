"""Promotion benchmark: how long a hot pooled room takes to reach workers of its own, on a real node.

    .venv/bin/python bench/promotion_bench.py [--senders 6] [--baseline-runs 3]   # as root; ~5 minutes warm

Runs the platform as the end-to-end suite does (tests/support/e2e.py `running_platform`: the image built from the
Dockerfile, a one-node cluster, `helm install`, examples/ applied; it needs root and a container engine). Then:

1. Baseline, in the same cluster: a plain client creates a Deployment with the pod template of the example room's
   own workers (the same image, probes, resources; other labels) and waits until its pod is Ready. That is what
   any way of giving a room workers of its own costs at least; the promotion is compared with it.
2. Promotion: the platform's autopilot is set to promote at `--senders` connections (the message-rate threshold
   out of reach, the cool-down off) and an `Auto` room is created (pooled). `--senders` clients connect through the
   front door and send steadily, each its next message once the last is acknowledged, reconnecting and resuming
   as docs/chat-protocol.md asks. The threshold is crossed when the last one has connected (t0). The operator
   learns the room's connections from the workers' load snapshots (a second after the connections moved by a
   tenth, else every 5 s) read through the API (every `VEZA_LOAD_INTERVAL_SECONDS`, 2 s by default), marks the
   room `Promoting`, starts its Deployment, and once it is
   Ready switches the route and has the pool close the room's sockets with 1012; clients reconnect through the same
   route to the new workers. Measured from t0: `Promoting` seen, `Dedicated` seen, and every client reconnected
   (`promotion_s`, target <= 10 s); and every client's longest wait for an ack (`max_client_gap_s`).

Correctness (asserted, as tests/e2e/test_pool.py does): every acknowledged send is stored once with the seq its
ack said, nothing else is stored, and every client saw every seq once, in order, across the move.
The last stdout line is one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chat import SteadySender, moved_under_load  # noqa: E402 - after the path
from tests.support.e2e import Account, Platform, connect_chat, running_platform  # noqa: E402

from veza_chat.worker import LOAD_EARLY  # noqa: E402
from veza_local.images import DockerEngine, build_veza_image, save_image  # noqa: E402
from veza_local.node import unsupported_reason  # noqa: E402
from veza_operator.settings import Settings  # noqa: E402

LOAD_READ_SECONDS = Settings().load_interval_seconds  # the operator's default VEZA_LOAD_INTERVAL_SECONDS


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def deployment_ready_seconds(platform: Platform, name: str) -> float:
    """A plain client's way to workers: the example room's pod template under another name, until Ready."""
    source = json.loads(platform.kubectl("get", "deployment", "chat-general", "-o", "json"))
    labels = {"app.kubernetes.io/name": "veza-baseline", "app.kubernetes.io/instance": name}
    template = source["spec"]["template"]
    template["metadata"] = {"labels": labels}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}}
    started = time.monotonic()
    platform.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    platform.kubectl("rollout", "status", f"deployment/{name}", "--timeout=180s")
    elapsed = time.monotonic() - started
    platform.kubectl("delete", "deployment", name, "--wait=false")
    return elapsed


def room_status(platform: Platform, room: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(platform.kubectl("get", "chatroom", room, "-o", "json")).get("status") or {}
    return found


async def promote(platform: Platform, senders_count: int) -> dict[str, Any]:
    platform.kubectl("patch", "vezaplatform", "demo", "--type=merge", "-p", json.dumps({"spec": {"chat": {
        "autopilot": {"promoteConnections": senders_count, "promoteMessagesPerSecond": 1000000,
                      "demoteBelowFraction": 0.01, "coolDownSeconds": 0}}}}))
    room = f"hot-{uuid.uuid4().hex[:6]}"
    platform.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": room},
        "spec": {"platformRef": {"name": "demo"}, "title": "Hot", "placement": "Auto",
                 "limits": {"messagesPerMinute": 6000}}}))
    platform.wait_ready(f"chatroom/{room}", timeout=180)
    assert room_status(platform, room).get("placement") == "Pooled"
    async with aiohttp.ClientSession() as session:
        tokens = [await (await Account(platform, f"Hot{i}").register(session)).service_token(session, "veza-chat")
                  for i in range(senders_count)]
    senders = [SteadySender(f"hot{i}", lambda after, t=t: connect_chat(platform, t, room=room, after=after),
                            retry_for=60.0) for i, t in enumerate(tokens)]
    marks: dict[str, float] = {}

    async def watch_the_move() -> None:
        while not all(s.sent >= 1 for s in senders):  # each has connected and sent
            await asyncio.sleep(0.05)
        t0 = marks["t0"] = time.monotonic()
        say(f"[promotion] {senders_count} connections: threshold crossed")
        while True:
            state = (await asyncio.to_thread(room_status, platform, room)).get("placement")
            now = time.monotonic() - t0
            if state in ("Promoting", "Dedicated"):
                marks.setdefault("promoting_s", now)
            if state == "Dedicated":
                marks.setdefault("dedicated_s", now)
            if "dedicated_s" in marks and all(s.reconnects >= 1 for s in senders):
                marks["promotion_s"] = now
                return
            if now > 300:
                raise TimeoutError(f"not promoted within 300 s: {state}, reconnects "
                                   f"{[s.reconnects for s in senders]}")
            await asyncio.sleep(0.2)

    await moved_under_load(platform.database_url, room, senders, watch_the_move, before=0.0, after=3.0)
    platform.kubectl("delete", "chatroom", room, "--wait=false")
    return {
        "room": room,
        "promoting_s": round(marks["promoting_s"], 2),
        "dedicated_s": round(marks["dedicated_s"], 2),
        "promotion_s": round(marks["promotion_s"], 2),
        "acked": sum(len(s.acked) for s in senders),
        "reconnects": sum(s.reconnects for s in senders),
        "refused_sends_resent": sum(len(s.refusals) for s in senders),
        "max_client_gap_s": round(max(s.max_gap for s in senders), 2),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    if reason := unsupported_reason():
        raise SystemExit(f"no real node here: {reason}")
    engine = DockerEngine().start()
    try:
        image = build_veza_image(engine)
        archive = save_image(engine, image)
    finally:
        engine.stop()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="veza-promotion-") as tmp, \
            running_platform(Path(tmp), image, archive) as platform:
        baseline = []
        for i in range(args.baseline_runs):
            baseline.append(deployment_ready_seconds(platform, f"baseline-{i}"))
            say(f"[baseline] a Deployment of the room's pod template Ready in {baseline[-1]:.1f} s")
        result = asyncio.run(promote(platform, args.senders))
        say(f"[promotion] {result}")
    plain = sorted(baseline)[len(baseline) // 2]
    return {
        "bench": "promotion", "senders": args.senders,
        **{k: v for k, v in result.items() if k != "room"},
        "baseline_deployment_ready_s": round(plain, 2),
        "baseline_runs_s": [round(b, 2) for b in baseline],
        "ratio_promotion_to_baseline": round(result["promotion_s"] / plain, 2),
        "promotion_after_detection_s": round(result["promotion_s"] - result["promoting_s"], 2),
        "load_snapshot_early_s": LOAD_EARLY, "load_read_s": LOAD_READ_SECONDS,
        "acked_exactly_once_gapless": True,  # moved_under_load asserted it
        "targets": {"promotion_s": "<= 10"},
        "loadavg_at_start": round(load_at_start, 2), "loadavg_at_end": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=6, help="clients, and the promotion threshold")
    parser.add_argument("--baseline-runs", type=int, default=3)
    print(json.dumps(main(parser.parse_args())))
