"""Events for the other workloads on a real NATS: session revocations and room membership changes, so open
WebSockets can follow them, rooms and channels created, updated and deleted, moderation decisions; every message
the API publishes is valid against the catalog's schema (docs/schemas/events/v1); the API keeps working when NATS
is away."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jwt
import nats as nats_client
from prometheus_client import REGISTRY

from tests.support.api import ADMIN_EMAIL, ApiServer, Client, ServerFactory
from tests.support.events import check
from tests.support.waiting import wait_for
from veza_core import events
from veza_local.services import NatsService, free_port


class Subscriber:
    """Every message under veza.<platform>.>, decoded and checked against its schema."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.invalid: list[str] = []

    async def on_message(self, msg: Any) -> None:
        try:
            check(msg.subject, msg.data)
        except AssertionError as exc:  # raised in a callback it would be lost: the test asserts the list
            self.invalid.append(str(exc))
        self.received.append((msg.subject, json.loads(msg.data)))

    async def next_on(self, subject: str, **expected: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for got_subject, payload in self.received:
                if got_subject == subject and all(payload.get(k) == v for k, v in expected.items()):
                    return payload
            return None

        return await wait_for(found, timeout=5, message=f"an event on {subject} with {expected}")


async def _logged_in(server: ApiServer) -> tuple[Client, dict[str, Any]]:
    tokens = await server.client.register_and_login()
    return server.client.as_user(tokens["access_token"]), tokens


async def test_revocations_and_membership_changes_are_published(make_api: ServerFactory, admin: Client,
                                                                nats: NatsService) -> None:
    server = await make_api(nats_url=nats.url)
    platform = server.settings.platform
    subscriber = Subscriber()
    listener = await nats_client.connect(nats.url)
    try:
        await listener.subscribe(f"veza.{platform}.>", cb=subscriber.on_message)
        await listener.flush()
        root_tokens = await server.client.register_and_login(ADMIN_EMAIL)
        root, root_id = server.client.as_user(root_tokens["access_token"]), root_tokens["user_id"]

        # (a) service tokens carry the session, so workers can match a revocation to its sockets.
        user, tokens = await _logged_in(server)
        sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
        chat = await user.post("/api/v1/auth/service-token", {"audience": "veza-chat"})
        assert jwt.decode(chat.body["token"], options={"verify_signature": False})["sid"] == sid

        assert (await user.post("/api/v1/auth/logout")).status == 204
        uid = tokens["user_id"]
        assert await subscriber.next_on(f"veza.{platform}.user.{uid}.revoked", reason="logout") == {
            "v": 1, "user": uid, "session": sid, "reason": "logout"}

        ouid = (await _logged_in(server))[1]["user_id"]
        assert (await root.patch(f"/api/v1/admin/users/{ouid}", {"disabled": True})).status == 200
        assert await subscriber.next_on(f"veza.{platform}.user.{ouid}.revoked", reason="disabled") == {
            "v": 1, "user": ouid, "session": None, "reason": "disabled"}

        room, member = f"r-{uuid.uuid4().hex[:8]}", (await _logged_in(server))[1]["user_id"]
        assert (await root.put(f"/api/v1/admin/rooms/{room}", {"title": "Events"})).status == 201
        membership = f"veza.{platform}.room.{room}.membership"
        assert (await root.put(f"/api/v1/rooms/{room}/members/{member}", {"role": "moderator"})).status == 204
        assert await subscriber.next_on(membership, role="moderator") == {
            "v": 1, "room": room, "user": member, "role": "moderator"}
        assert (await root.delete(f"/api/v1/rooms/{room}/members/{member}")).status == 204
        assert await subscriber.next_on(membership, role=None) == {"v": 1, "room": room, "user": member, "role": None}

        banned = (await _logged_in(server))[1]["user_id"]
        assert (await root.post(f"/api/v1/rooms/{room}/moderation", {"action": "ban", "user_id": banned})).status == 201
        assert await subscriber.next_on(membership, user=banned) == {"v": 1, "room": room, "user": banned, "role": None}

        # Moderation decisions, with the decision's number in the id: the same decision always has the same id.
        muted = (await _logged_in(server))[1]["user_id"]
        decision = await root.post(f"/api/v1/rooms/{room}/moderation",
                                   {"action": "mute", "user_id": muted, "reason": "spam", "duration_seconds": 60})
        mute = await subscriber.next_on(f"veza.{platform}.room.{room}.moderation", user_id=muted)
        assert mute["id"] == f"{room}:{decision.body['id']}" and mute["action"] == "mute"
        assert mute["reason"] == "spam" and mute["actor"] == root_id and mute["until"] > mute["at"] + 50

        # Rooms and channels in the directory: created, updated, deleted, each event with its own id.
        lifecycle = f"veza.{platform}.room.{room}.lifecycle"
        created = await subscriber.next_on(lifecycle, action="created")
        assert (created["title"], created["visibility"]) == ("Events", "public")
        assert (await root.put(f"/api/v1/admin/rooms/{room}", {"title": "Renamed", "visibility": "private"})).status \
            == 200
        updated = await subscriber.next_on(lifecycle, action="updated")
        assert (updated["title"], updated["visibility"]) == ("Renamed", "private") and updated["id"] != created["id"]
        assert (await root.delete(f"/api/v1/admin/rooms/{room}")).status == 204
        assert (await subscriber.next_on(lifecycle, action="deleted"))["title"] is None
        channel = f"c-{uuid.uuid4().hex[:8]}"
        assert (await root.put(f"/api/v1/admin/channels/{channel}", {"title": "Radio"})).status == 201
        await subscriber.next_on(f"veza.{platform}.channel.{channel}.lifecycle", action="created", title="Radio")
        assert (await root.delete(f"/api/v1/admin/channels/{channel}")).status == 204
        await subscriber.next_on(f"veza.{platform}.channel.{channel}.lifecycle", action="deleted")

        # Everything the API publishes was seen, and every message was valid against its schema.
        kinds = {getattr(events.by_subject(subject), "kind", subject) for subject, _ in subscriber.received}
        assert kinds == {e.kind for e in events.CATALOG if "api" in e.producers}
        assert not subscriber.invalid, subscriber.invalid
    finally:
        await listener.close()


def _failures() -> float:
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "veza_api_bus_publish_failures"
               for sample in metric.samples if sample.name.endswith("_total") and sample.labels["event"] == "revoked")


async def test_without_nats_the_api_works_and_counts_what_it_could_not_say(make_api: ServerFactory) -> None:
    server = await make_api(nats_url=f"nats://127.0.0.1:{free_port()}")  # nobody listens there
    try:
        user, _ = await _logged_in(server)
        before = _failures()
        assert (await user.post("/api/v1/auth/logout")).status == 204
        assert _failures() == before + 1
    finally:
        await server.stop()
