"""Pooled rooms on the cluster: the platform's chat pool (real pods of the project's image) serves rooms that have no
workers of their own, through the same front door as the dedicated example room `general`; a room moves to its own
workers and back while clients keep sending through the front door, and nothing acknowledged is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from tests.support.chat import SteadySender, moved_under_load
from tests.support.e2e import Account, Platform, connect_chat
from tests.support.waiting import wait_for

NAMESPACE = "veza"


def chat_room(name: str, placement: str) -> dict[str, Any]:
    return {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": name},
            "spec": {"platformRef": {"name": "demo"}, "title": name.title(), "placement": placement,
                     "limits": {"messagesPerMinute": 6000}}}


def status(platform: Platform, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(platform.kubectl("get", "chatroom", name, "-o", "json")).get("status") or {}
    return found


def pool_metric(platform: Platform, name: str, **labels: str) -> float:
    """The sum over the chat pool's pods of one metric, read from each pod's own /metrics."""
    total = 0.0
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for pod in platform.ready_pods("app.kubernetes.io/instance=demo-chat-pool"):
        text = platform.kubectl("exec", pod, "--", "python", "-c", "import urllib.request;print(urllib.request."
                                "urlopen('http://127.0.0.1:8080/metrics').read().decode())")
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == name or sample == f"{name}{{{want}}}":
                total += float(value)
    return total


@pytest.fixture
def room(platform: Platform, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"pool-{uuid.uuid4().hex[:6]}"
    placement = getattr(request, "param", "Pooled")
    platform.kubectl("apply", "-f", "-", input=json.dumps(chat_room(name, placement)))
    platform.wait_ready(f"chatroom/{name}", timeout=180)
    yield name
    platform.kubectl("delete", "chatroom", name, "--wait=false", check=False)


async def _token(platform: Platform, session: aiohttp.ClientSession, name: str) -> str:
    account = await Account(platform, name).register(session)
    return await account.service_token(session, "veza-chat")


async def test_a_pooled_room_beside_a_dedicated_one(platform: Platform, room: str) -> None:
    state = status(platform, room)
    assert state.get("placement") == "Pooled", state
    # A pooled room adds no workers of its own: the pool's pods serve it.
    assert not platform.kubectl("get", "deployment", f"chat-{room}", "--ignore-not-found", "-o", "name").strip()
    assert platform.ready_pods("app.kubernetes.io/instance=demo-chat-pool")
    async with aiohttp.ClientSession() as session:
        alice, bob = await _token(platform, session, "Alice"), await _token(platform, session, "Bob")
        a = await connect_chat(platform, alice, room=room, attempts=20)
        b = await connect_chat(platform, bob, room=room, attempts=20)
        g = await connect_chat(platform, bob, room="general", attempts=5)  # the dedicated example room
        try:
            cid = uuid.uuid4().hex
            await a.send({"type": "send", "cid": cid, "text": "hello pool"})
            seq = (await a.expect("ack", cid=cid))["seq"]
            assert (await b.expect("event", seq=seq))["text"] == "hello pool"
            await g.send({"type": "send", "cid": cid, "text": "hello general"})
            assert (await g.expect("ack", cid=cid))["seq"] >= 1
            await asyncio.sleep(0.5)
            assert [f.get("text") for f in g.frames if f["type"] == "event"] == ["hello general"]
        finally:
            for c in (a, b, g):
                await c.close()
    assert await asyncio.to_thread(pool_metric, platform, "veza_chat_rooms") >= 1


async def test_a_room_moves_to_its_own_workers_and_back_under_steady_sends(platform: Platform, room: str) -> None:
    """The operator's move through the front door: clients on the pool keep sending while `placement` goes to
    Dedicated (its own Deployment, Ready, its route, then the pool lets go with 1012) and back to Pooled."""
    async with aiohttp.ClientSession() as session:
        tokens = [await _token(platform, session, f"Sender{i}") for i in range(4)]
    senders = [SteadySender(f"sender{i}", lambda after, t=t: connect_chat(platform, t, room=room, after=after),
                            retry_for=60.0) for i, t in enumerate(tokens)]
    timings: dict[str, float] = {}

    def moved_to(placement: str) -> Any:
        async def move() -> None:
            started = time.monotonic()
            await asyncio.to_thread(platform.kubectl, "patch", "chatroom", room, "--type=merge", "-p",
                                    json.dumps({"spec": {"placement": placement}}))

            async def arrived() -> bool:
                state = await asyncio.to_thread(status, platform, room)
                return state.get("placement") == placement and all(s.reconnects >= 1 for s in senders)

            await wait_for(arrived, timeout=180, interval=0.5, message=f"the room {placement} and every client moved")
            timings[placement] = time.monotonic() - started
        return move

    await moved_under_load(platform.database_url, room, senders, moved_to("Dedicated"), before=3.0, after=3.0)
    own = json.loads(platform.kubectl("get", "deployment", f"chat-{room}", "-o", "json"))
    assert (own.get("status") or {}).get("readyReplicas", 0) >= 1  # the room's own workers served it
    refused = {"Dedicated": sum((s.handshake_refusals for s in senders), Counter())}
    for s in senders:
        s.stop.clear()
        s.reconnects = 0
        s.handshake_refusals.clear()
    await moved_under_load(platform.database_url, room, senders, moved_to("Pooled"), before=3.0, after=3.0)
    await asyncio.to_thread(platform.kubectl, "wait", "--for=delete", f"deployment/chat-{room}", "--timeout=120s")
    refused["Pooled"] = sum((s.handshake_refusals for s in senders), Counter())
    # Refused reconnects, by status: 404 while the front door has yet to load a new room's route, 503 `room_moved`
    # from the pool after a promotion; none expected on a demotion (its workers outlive the route's switch).
    print(f"moves: to Dedicated {timings['Dedicated']:.1f} s, back to Pooled {timings['Pooled']:.1f} s; longest "
          f"wait for an ack {max(s.max_gap for s in senders):.1f} s; refused reconnects {refused}")
