"""Send, ack, history and fan-out between two real worker processes."""

from __future__ import annotations

import itertools

import aiohttp

from tests.support.chat import HISTORY_SCHEMA, Chat, ChatClient
from tests.support.waiting import wait_for


async def presence_change(client: ChatClient, op: str, user: str, timeout: float = 10) -> None:
    """Wait for a presence frame announcing that `user` joined or left."""
    while True:
        frame = await client.expect("presence", op=op, timeout=timeout)
        if user in [u["id"] for u in frame["users"]]:
            return


async def test_send_is_acked_with_seq_and_reaches_clients_of_both_workers(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    alice = await chat.connect(a, "alice")
    bob = await chat.connect(b, "bob", via_header=True)
    assert alice.welcome["last_seq"] == 0 and alice.welcome["room"]["name"] == chat.room
    assert alice.welcome["user"] == {"id": "alice", "name": "Alice", "role": "member"}

    await alice.send({"type": "send", "cid": "c1", "text": "hello"})
    ack = await alice.expect("ack", cid="c1")
    assert ack["seq"] == 1 and ack["duplicate"] is False
    for client in (alice, bob):
        event = await client.expect("event", seq=1)
        assert event["kind"] == "message" and event["text"] == "hello" and event["author"]["id"] == "alice"
        assert event["id"] == ack["id"]

    await bob.send({"type": "send", "cid": "b1", "text": "hi alice", "reply_to": 1})
    ack2 = await bob.expect("ack", cid="b1")
    assert ack2["seq"] == 2
    assert (await alice.expect("event", seq=2))["reply_to"] == 1


async def test_retried_send_is_not_duplicated(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    alice = await chat.connect(a, "alice")
    await alice.send({"type": "send", "cid": "same", "text": "once"})
    first = await alice.expect("ack", cid="same")
    await alice.send({"type": "send", "cid": "same", "text": "once"})
    again = await alice.expect("ack", cid="same")
    assert again == {**first, "duplicate": True}
    # Retried on the other replica after a reconnect: still the same seq.
    alice2 = await chat.connect(b, "alice")
    await alice2.send({"type": "send", "cid": "same", "text": "once"})
    assert (await alice2.expect("ack", cid="same"))["seq"] == first["seq"]
    # Two copies in flight at once (one group commit) make one event too.
    await alice.send({"type": "send", "cid": "burst", "text": "x"})
    await alice.send({"type": "send", "cid": "burst", "text": "x"})
    acks = [await alice.expect("ack", cid="burst"), await alice.expect("ack", cid="burst")]
    assert acks[0]["seq"] == acks[1]["seq"] and sorted(a["duplicate"] for a in acks) == [False, True]
    await alice.send({"type": "history", "ref": "h"})
    page = await alice.expect("history", ref="h")
    assert [e["text"] for e in page["events"]] == ["once", "x"]


async def test_concurrent_sends_on_two_workers_get_gapless_seqs_in_order_everywhere(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    senders = [await chat.connect(a, "s1"), await chat.connect(b, "s2")]
    watchers = [await chat.connect(a, "w1"), await chat.connect(b, "w2")]
    n = 150
    for i in range(n):
        for k, s in enumerate(senders):
            await s.send({"type": "send", "cid": f"{k}-{i}", "text": f"{k}:{i}"})
    acked = set()
    for s in senders:
        while len([f for f in s.frames if f["type"] == "ack"]) < n:
            await s.recv()
        acked |= {f["seq"] for f in s.frames if f["type"] == "ack"}
    assert acked == set(range(1, 2 * n + 1))
    for w in watchers:
        while len(w.events()) < 2 * n:
            assert await w.recv() is not None
        assert w.events() == list(range(1, 2 * n + 1)), "in order, no gap, no duplicate"


async def test_a_sockets_pipelined_operations_take_seqs_in_the_order_they_came(chat: Chat) -> None:
    """An edit looks its target up before it is queued and a send does not: sent back to back, each would overtake
    the edit before it were the operations not queued in frame order. A refused frame holds nobody up."""
    alice = await chat.connect(await chat.worker(), "alice")
    await alice.send({"type": "send", "cid": "first", "text": "first"})
    assert (await alice.expect("ack", cid="first"))["seq"] == 1
    frames = []
    for i in range(15):
        frames += [{"type": "edit", "cid": f"edit-{i}", "seq": 1, "text": f"edit {i}"},
                   {"type": "send", "cid": f"send-{i}", "text": f"send {i}"}]
    frames.insert(9, {"type": "edit", "cid": "refused", "seq": 999, "text": "no such message"})
    for frame in frames:
        await alice.send(frame)
    assert (await alice.expect("error", cid="refused"))["code"] == "not_found"
    queued = [f["cid"] for f in frames if f["cid"] != "refused"]
    seqs = [(await alice.expect("ack", cid=cid))["seq"] for cid in queued]
    assert seqs == list(range(2, 2 + len(queued))), dict(zip(queued, seqs, strict=True))


async def test_history_over_rest_and_socket(chat: Chat) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    for i in range(12):
        await alice.send({"type": "send", "cid": f"m{i}", "text": f"m{i}"})
        await alice.expect("ack", cid=f"m{i}")
    headers = {"Authorization": f"Bearer {chat.token('bob')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{a.url}/chat/{chat.room}/history?limit=5", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 200
        HISTORY_SCHEMA.validate(body)
        assert [e["seq"] for e in body["events"]] == [8, 9, 10, 11, 12] and body["has_more"]
        assert body["last_seq"] == 12
        async with http.get(f"{a.url}/chat/{chat.room}/history?before=8&limit=5", headers=headers) as resp:
            assert [e["seq"] for e in (await resp.json())["events"]] == [3, 4, 5, 6, 7]
        async with http.get(f"{a.url}/chat/{chat.room}/history?after=10&limit=5", headers=headers) as resp:
            body = await resp.json()
            assert [e["seq"] for e in body["events"]] == [11, 12] and not body["has_more"]
        async with http.get(f"{a.url}/chat/{chat.room}/history") as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "token_missing"
        async with http.get(f"{a.url}/chat/{chat.room}/history?limit=abc", headers=headers) as resp:
            assert resp.status == 400
        async with http.get(f"{a.url}/chat/other-room/history", headers=headers) as resp:
            assert resp.status == 404
    await alice.send({"type": "history", "ref": "p", "before": 3, "limit": 10})
    page = await alice.expect("history", ref="p")
    assert [e["seq"] for e in page["events"]] == [1, 2] and not page["has_more"]


async def test_edit_delete_reactions_and_permissions(chat: Chat) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    bob = await chat.connect(a, "bob")
    mod = await chat.connect(a, "mia", res={f"room/{chat.room}": "moderator"})
    assert mod.welcome["user"]["role"] == "moderator"
    await alice.send({"type": "send", "cid": "m1", "text": "helo"})
    seq = (await alice.expect("ack", cid="m1"))["seq"]

    await bob.send({"type": "edit", "cid": "e0", "seq": seq, "text": "hacked"})
    assert (await bob.expect("error", cid="e0"))["code"] == "forbidden"
    await alice.send({"type": "edit", "cid": "e1", "seq": seq, "text": "hello"})
    await alice.expect("ack", cid="e1")
    edit = await bob.expect("event", kind="edit")
    assert edit["target"] == seq and edit["text"] == "hello"

    await bob.send({"type": "react", "cid": "r1", "seq": seq, "emoji": "👍"})
    await bob.expect("ack", cid="r1")
    await alice.send({"type": "react", "cid": "r2", "seq": seq, "emoji": "👍"})
    await alice.expect("ack", cid="r2")
    await alice.send({"type": "react", "cid": "r3", "seq": seq, "emoji": "👍", "op": "remove"})
    await alice.expect("ack", cid="r3")
    assert (await bob.expect("event", kind="reaction_remove"))["emoji"] == "👍"
    await alice.send({"type": "history", "ref": "h", "after": 0})
    message = (await alice.expect("history", ref="h"))["events"][0]
    assert message["text"] == "hello" and "edited_ts" in message and message["reactions"] == {"👍": ["bob"]}

    await bob.send({"type": "delete", "cid": "d0", "seq": seq})
    assert (await bob.expect("error", cid="d0"))["code"] == "forbidden"
    await mod.send({"type": "delete", "cid": "d1", "seq": seq})
    await mod.expect("ack", cid="d1")
    await alice.expect("event", kind="delete", target=seq)
    await alice.send({"type": "history", "ref": "h2", "after": 0, "limit": 1})
    gone = (await alice.expect("history", ref="h2"))["events"][0]
    assert gone["deleted"] is True and "text" not in gone
    await alice.send({"type": "edit", "cid": "e2", "seq": seq, "text": "back"})
    assert (await alice.expect("error", cid="e2"))["code"] == "not_found"


async def test_typing_read_receipts_and_presence(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    alice = await chat.connect(a, "alice")
    bob = await chat.connect(b, "bob")
    await alice.send({"type": "typing", "active": True})
    typing = await bob.expect("typing")
    assert typing["user"]["id"] == "alice" and typing["active"] is True

    await alice.send({"type": "send", "cid": "m", "text": "x"})
    seq = (await alice.expect("ack", cid="m"))["seq"]
    # Bob's replica may not have delivered the message yet: the read still counts, and a
    # seq beyond the room's last is clamped to it.
    await bob.send({"type": "read", "seq": seq + 1000})
    read = await alice.expect("read")
    assert read["user"]["id"] == "bob" and read["seq"] == seq
    await bob.send({"type": "read", "seq": 0})  # older than what bob read: ignored
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/chat/{chat.room}/reads",
                        headers={"Authorization": f"Bearer {chat.token('carol')}"}) as resp:
        assert await resp.json() == {"room": chat.room, "reads": {"bob": seq}}

    asked = itertools.count()

    async def both_listed() -> bool:
        ref = f"p{next(asked)}"
        await bob.send({"type": "presence", "ref": ref})
        listed = await bob.expect("presence", op="list", ref=ref)
        return {u["id"] for u in listed["users"]} == {"alice", "bob"}

    # Alice's join reaches bob's replica as a signal: it may still be on its way.
    await wait_for(both_listed, timeout=5, message="alice and bob listed on bob's replica")
    carol = await chat.connect(b, "carol")
    await presence_change(alice, "join", "carol")
    await carol.close()
    await presence_change(alice, "leave", "carol")
    await alice.send({"type": "ping", "ref": "x"})
    await alice.expect("pong", ref="x")


async def test_users_of_a_crashed_worker_leave_presence(chat: Chat) -> None:
    a = await chat.worker(None, VEZA_CHAT_PRESENCE_TTL_SECONDS="2")
    b = await chat.worker(None, VEZA_CHAT_PRESENCE_TTL_SECONDS="2")
    alice = await chat.connect(a, "alice")
    await chat.connect(b, "bob")
    await presence_change(alice, "join", "bob")
    b.kill()
    await presence_change(alice, "leave", "bob", timeout=15)
    await alice.send({"type": "presence", "ref": "p"})
    assert [u["id"] for u in (await alice.expect("presence", op="list"))["users"]] == ["alice"]


async def test_metrics_and_health(chat: Chat) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    await alice.send({"type": "send", "cid": "m", "text": "x"})
    await alice.expect("ack", cid="m")
    await alice.ws.send_str("nope")
    await alice.expect("error")
    async with aiohttp.ClientSession() as http:
        async with http.get(a.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(a.url + "/metrics") as resp:
            text = await resp.text()
    for needle in ("veza_chat_connections 1.0", 'veza_chat_frames_in_total{type="send"} 1.0',
                   'veza_chat_errors_total{code="bad_json"} 1.0', "veza_chat_ack_seconds_count 1.0",
                   "veza_chat_fanout_seconds_count", "veza_chat_events_committed_total 1.0",
                   # exported once the worker settled its heap (veza_core.heap: boot frozen, full collections spaced)
                   'veza_gc_pause_seconds_count{generation="2"}'):
        assert needle in text, needle
