"""Day-2 operations on the running platform, with clients connected through the front door.

A chat pod deleted mid-conversation, a room scaled to three replicas, routing moved to the
Gateway API and back, an image upgrade: no acknowledged message is lost or duplicated, clients
resume on the remaining replicas, listeners reconnect. Runs after the other e2e modules (it moves
pods around) and ends by checking that no pod restarted unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
from tests.support.chat import ChatClient
from tests.support.e2e import GENERAL, Account, Platform, chat_worker_connections, connect_chat
from tests.support.waiting import wait_for

SEND_INTERVAL = 1.2  # under the example room's 60 messages a minute per user


class Conversation:
    """Senders sending through the front door and receivers reading every event, both resuming
    (`?after=`) on whatever replica the front door gives them when their socket goes away."""

    def __init__(self, platform: Platform, tokens: list[str], receivers: int) -> None:
        self.platform = platform
        self.tokens = tokens
        self.receivers = receivers
        self.acked: dict[str, int] = {}  # cid -> seq
        self.seen: list[list[int]] = [[] for _ in range(receivers)]
        self.reconnects = 0
        self.start_seq = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = 0

    async def start(self) -> None:
        first = await connect_chat(self.platform, self.tokens[0])
        self.start_seq = first.welcome["last_seq"]
        await first.close()
        for i in range(self.receivers):
            self._tasks.append(asyncio.create_task(self._receive(i)))
        while self._ready < self.receivers:
            await asyncio.sleep(0.05)
        for token in self.tokens:
            self._tasks.append(asyncio.create_task(self._send(token)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks[self.receivers:])  # senders finish their last ack
        last = max(self.acked.values(), default=self.start_seq)
        deadline = time.monotonic() + 30
        while any((s[-1] if s else self.start_seq) < last for s in self.seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for task in self._tasks[:self.receivers]:
            task.cancel()
        await asyncio.gather(*self._tasks[:self.receivers], return_exceptions=True)

    async def _client(self, token: str, after: int) -> ChatClient:
        self.reconnects += 1
        return await connect_chat(self.platform, token, after=after, attempts=60)

    async def _receive(self, index: int) -> None:
        seen = self.seen[index]
        client = await connect_chat(self.platform, self.tokens[0], after=self.start_seq)
        self._ready += 1
        try:
            while True:
                try:
                    frame = await client.recv(timeout=30)
                except (TimeoutError, aiohttp.ClientError):
                    frame = None
                if frame is None:  # the pod went away: resume after what we have, on any replica
                    await client.close()
                    client = await self._client(self.tokens[0], seen[-1] if seen else self.start_seq)
                    continue
                if frame["type"] == "event" and frame["kind"] == "message":
                    seen.append(frame["seq"])
        finally:  # cancelled by stop()
            await client.close()

    async def _send(self, token: str) -> None:
        client = await connect_chat(self.platform, token)
        try:
            while not self._stop.is_set():
                cid = uuid.uuid4().hex
                frame = {"type": "send", "cid": cid, "text": f"m-{cid[:8]}"}
                while cid not in self.acked:  # until acked: resend the same cid after any failure
                    try:
                        await client.send(frame)
                        ack = await client.expect("ack", cid=cid, timeout=10)
                        self.acked[cid] = ack["seq"]
                    except (ConnectionError, TimeoutError, aiohttp.ClientError):
                        with contextlib.suppress(Exception):
                            await client.close()
                        client = await self._client(token, self.start_seq)
                await asyncio.sleep(SEND_INTERVAL)
        finally:
            await client.close()

    def check(self) -> None:
        acked = sorted(self.acked.values())
        assert acked, "nothing was acknowledged"
        assert len(set(acked)) == len(acked), "two sends got one seq"
        for index, seen in enumerate(self.seen):
            assert seen == sorted(set(seen)), f"receiver {index}: out of order or duplicated: {seen}"
            missing = set(acked) - set(seen)
            assert not missing, f"receiver {index} never got acknowledged seqs {sorted(missing)}"


async def _tokens(platform: Platform, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return [await (await Account(platform, f"User{i}").register(session)).service_token(session, "veza-chat")
                for i in range(count)]


async def _wait(condition: Callable[[], Any], timeout: float, message: str) -> None:
    """`wait_for` with a blocking check (kubectl, the front door's API) run off the event loop."""
    await wait_for(lambda: asyncio.to_thread(condition), timeout=timeout, interval=1, message=message)


async def test_deleting_a_chat_pod_loses_no_acknowledged_message(platform: Platform) -> None:
    chat = GENERAL
    before = platform.ready_pods(chat)
    assert len(before) == 2
    conversation = Conversation(platform, await _tokens(platform, 3), receivers=4)
    await conversation.start()
    await asyncio.sleep(4)
    await asyncio.to_thread(platform.kubectl, "delete", "pod", before[0], "--wait=false")
    await asyncio.sleep(8)
    await conversation.stop()
    conversation.check()
    assert conversation.reconnects >= 1, "nobody was on the deleted pod"
    # The Deployment replaced the pod.
    await _wait(lambda: len(platform.ready_pods(chat)) == 2 and before[0] not in platform.ready_pods(chat), 120,
                "the deleted chat pod was not replaced")


async def test_scaling_a_room_to_three_replicas(platform: Platform) -> None:
    chat = GENERAL
    old = set(platform.ready_pods(chat))
    platform.kubectl("scale", "chatroom", "general", "--replicas=3")
    try:
        await _wait(lambda: len(platform.ready_pods(chat)) == 3, 120, "no third chat pod")
        new = (set(platform.ready_pods(chat)) - old).pop()
        tokens = await _tokens(platform, 1)
        clients: list[ChatClient] = []
        try:
            while True:  # the front door sends the third pod its share of new sockets
                clients.append(await connect_chat(platform, tokens[0]))
                if (await chat_worker_connections(platform)).get(new, 0) >= 1:
                    break
                assert len(clients) < 30, "the third pod never got a client"
            await clients[0].send({"type": "send", "cid": uuid.uuid4().hex, "text": "three replicas"})
            ack = await clients[0].expect("ack")
            for client in clients:
                await client.expect("event", seq=ack["seq"], timeout=15)
        finally:
            for client in clients:
                await client.close()
    finally:
        platform.kubectl("scale", "chatroom", "general", "--replicas=2")
        await _wait(lambda: len(platform.ready_pods(chat)) == 2, 120, "not back to two chat pods")


def _patch_platform(platform: Platform, patch: dict[str, object]) -> None:
    platform.kubectl("patch", "vezaplatform", "demo", "--type=merge", "-p", json.dumps(patch))


async def test_routes_move_to_the_gateway_api_and_back(platform: Platform) -> None:
    gateway = {"name": "veza", "namespace": "veza-front-door"}
    _patch_platform(platform, {"spec": {"gateway": gateway, "ingress": {"enabled": False}}})
    try:
        await _wait(lambda: not json.loads(platform.kubectl("get", "ingress", "-o", "json"))["items"], 60,
                    "Ingresses not removed")
        routes = json.loads(platform.kubectl("get", "httproutes", "-o", "json"))["items"]
        assert {r["metadata"]["name"] for r in routes} >= {"demo", "chat-general", "stream-radio"}, routes

        def accepted() -> bool:
            items = json.loads(platform.kubectl("get", "httproutes", "-o", "json"))["items"]
            return all(any(c["type"] == "Accepted" and c["status"] == "True"
                           for parent in r.get("status", {}).get("parents", []) for c in parent["conditions"])
                       for r in items)

        await _wait(accepted, 60, "HTTPRoutes not Accepted by the Gateway")
        # Traefik applies provider changes a moment later (it batches them): until it serves the
        # host from HTTPRoutes only, a request could still go through a deleted Ingress's router.
        await _wait(lambda: platform.front_door_routers() == {"kubernetesgateway"}, 60,
                    "the front door still serves Ingress routes")
        # Only the Gateway routes now: the API and a WebSocket still answer through the front door.
        async with aiohttp.ClientSession() as session:
            account = await Account(platform, "Gate").register(session)
            token = await account.service_token(session, "veza-chat")
        client = await connect_chat(platform, token, attempts=20)
        await client.close()
    finally:
        _patch_platform(platform, {"spec": {"gateway": None, "ingress": {"enabled": True}}})
    await _wait(lambda: len(json.loads(platform.kubectl("get", "ingress", "-o", "json"))["items"]) >= 3, 60,
                "Ingresses not back")
    await _wait(lambda: not json.loads(platform.kubectl("get", "httproutes", "-o", "json"))["items"], 60,
                "HTTPRoutes not pruned")
    await _wait(lambda: platform.front_door_routers() == {"kubernetes"}, 60,
                "the front door does not serve the Ingress routes alone")


async def _listen(platform: Platform, stop: asyncio.Event, received: list[int]) -> None:
    """A progressive listener that reconnects whenever its stream ends, like a player does."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with aiohttp.ClientSession() as session, session.get(
                    platform.url("/stream/radio/mp3-128"), headers=platform.headers,
                    timeout=aiohttp.ClientTimeout(sock_read=10)) as r:
                if r.status == 200:
                    async for chunk in r.content.iter_any():
                        received.append(len(chunk))
                        if stop.is_set():
                            return
        received.append(-1)  # a reconnect
        await asyncio.sleep(0.5)


async def test_image_upgrade_rolls_every_worker_after_the_migration(platform: Platform) -> None:
    repository, tag = platform.next_image.rsplit(":", 1)
    conversation = Conversation(platform, await _tokens(platform, 3), receivers=3)
    await conversation.start()
    stop, received = asyncio.Event(), []
    listener = asyncio.create_task(_listen(platform, stop, received))
    await asyncio.sleep(3)
    _patch_platform(platform, {"spec": {"image": {"repository": repository, "tag": tag}}})

    def rolled() -> bool:
        deployments = json.loads(platform.kubectl("get", "deployments", "-o", "json"))["items"]
        return all(d["spec"]["template"]["spec"]["containers"][0]["image"] == platform.next_image
                   and d["status"].get("updatedReplicas") == d["spec"]["replicas"]
                   and d["status"].get("availableReplicas") == d["spec"]["replicas"]
                   and d["status"].get("replicas") == d["spec"]["replicas"] for d in deployments)

    try:
        await _wait(rolled, 300, "workers did not roll to the new image")
        # The stream pod was replaced: the listener lost it, reconnected, and hears the new one
        # (two seconds of 128 kbit/s within half a minute, time for the old pod to drain).
        rolled_at = len(received)
        deadline = time.monotonic() + 30
        while not (-1 in received and sum(n for n in received[rolled_at:] if n > 0) > 32_000):
            assert time.monotonic() < deadline, f"the listener did not come back: {received[rolled_at:][-20:]}"
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await conversation.stop()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    conversation.check()
    # The migration Job of the new image ran, and finished before any worker of the new image started.
    jobs = [j for j in json.loads(platform.kubectl("get", "jobs", "-o", "json"))["items"]
            if j["spec"]["template"]["spec"]["containers"][0]["image"] == platform.next_image]
    assert jobs and all(j["status"].get("succeeded") == 1 for j in jobs), jobs
    finished = max(datetime.fromisoformat(j["status"]["completionTime"]) for j in jobs)
    for pod in platform.pods("app.kubernetes.io/name=veza"):
        if pod["spec"]["containers"][0]["image"] == platform.next_image and "job-name" not in pod["metadata"]["labels"]:
            assert datetime.fromisoformat(pod["metadata"]["creationTimestamp"]) >= finished, pod["metadata"]["name"]
    await asyncio.to_thread(platform.wait_ready, "vezaplatform/demo", "chatroom/general", "streamchannel/radio")


def test_no_pod_restarted(platform: Platform) -> None:
    restarts = {pod: n for pod, n in platform.restarts().items() if n}
    assert not restarts, restarts
