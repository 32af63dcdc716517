"""Batched delivery (docs/chat-protocol.md, "Batched delivery"): a client that connects with `?batch=1` gets live
events in `events` frames — every event once, in seq order, no frame beyond the bounds its welcome states — while a
client that did not ask, in the same room, gets one `event` frame per event exactly as before."""

from __future__ import annotations

import asyncio
import json
import random
import time
from types import SimpleNamespace
from typing import Any

from tests.support.chat import FAST_SPEC, SERVER_SCHEMA, Chat, ChatClient
from tests.support.waiting import wait_for
from veza_chat import protocol as p
from veza_chat.room import Client, Encoded, Room, encode, text_frame


def event(seq: int, text: str) -> dict[str, Any]:
    return {"seq": seq, "kind": "message", "id": f"id-{seq}", "author": {"id": "u", "name": "U"},
            "ts": 1_764_000_000_000 + seq, "text": text}


def ev(seq: int) -> Encoded:
    return encode(event(seq, f"m{seq}"))


def frame_bytes(frame: dict[str, Any]) -> int:
    """The length of a received frame's JSON text as the server wrote it (compact, UTF-8, key order kept)."""
    return len(p.dumps(frame).encode())


def batch_frames(client: ChatClient) -> list[dict[str, Any]]:
    return [f for f in client.frames if f["type"] == "events"]


async def receive_through(client: ChatClient, seq: int, timeout: float = 20.0) -> None:
    """Read frames until the event `seq` has arrived (in an `event` or an `events` frame)."""
    async def until() -> None:
        while seq not in client.events():
            if await client.recv(timeout) is None:
                raise ConnectionError(f"closed ({client.close_code}) before seq {seq}")

    await asyncio.wait_for(until(), timeout)


async def burst(senders: list[ChatClient], per_sender: int, *, tag: str = "b") -> list[int]:
    """Every sender sends `per_sender` messages without waiting, all at once; the seqs their acks returned."""
    for k, sender in enumerate(senders):
        for i in range(per_sender):
            await sender.send({"type": "send", "cid": f"{tag}{k}-{i}", "text": f"{tag}{k}-{i}"})

    async def acks_of(k: int, sender: ChatClient) -> list[int]:
        return [(await sender.expect("ack", cid=f"{tag}{k}-{i}", timeout=30))["seq"] for i in range(per_sender)]

    return sorted(seq for seqs in await asyncio.gather(*(acks_of(k, s) for k, s in enumerate(senders)))
                  for seq in seqs)


def within_bounds(client: ChatClient) -> None:
    terms = client.welcome["batch"]
    for frame in batch_frames(client):
        assert 1 <= len(frame["events"]) <= terms["max_events"]
        assert frame_bytes(frame) <= terms["max_bytes"] or len(frame["events"]) == 1


# -- the frame builder alone ---------------------------------------------------------------------------------

def test_events_frames_keep_every_event_in_order_within_the_bounds() -> None:
    rng = random.Random(7)
    # Many small events (the count bound), then sizes around the byte bound, and one event alone beyond it.
    texts = ["s"] * 600 + [rng.choice("abcdé🎵") * rng.choice([1, 20, 300, 5000, 20_000]) for _ in range(1400)]
    texts.insert(700, "x" * (p.BATCH_MAX_BYTES + 10))
    encoded = [encode(event(seq, text))[1].encode() for seq, text in enumerate(texts, start=1)]
    frames = p.events_payloads(encoded)
    seqs: list[int] = []
    for raw in frames:
        frame = json.loads(raw)
        SERVER_SCHEMA.validate(frame)
        assert frame["type"] == "events" and 1 <= len(frame["events"]) <= p.BATCH_MAX_EVENTS
        assert len(raw) <= p.BATCH_MAX_BYTES or len(frame["events"]) == 1
        assert raw == p.EVENTS_HEAD + b",".join(p.dumps(e).encode() for e in frame["events"]) + p.EVENTS_TAIL
        seqs += [e["seq"] for e in frame["events"]]
    assert seqs == list(range(1, len(texts) + 1))
    assert any(len(json.loads(f)["events"]) == p.BATCH_MAX_EVENTS for f in frames)  # the count bound was reached
    assert max(map(len, frames)) > p.BATCH_MAX_BYTES  # the oversized event went alone


def test_a_frame_may_fill_the_byte_bound_exactly() -> None:
    one = encode(event(1, "a"))[1].encode()
    overhead = len(p.EVENTS_HEAD) + len(p.EVENTS_TAIL) + len(one) + 1  # head, tail, first event, comma
    second = encode(event(2, "b"))[1].encode()
    filler = encode(event(2, "b" * (p.BATCH_MAX_BYTES - overhead - len(second) + 1)))[1].encode()
    assert len(p.events_payloads([one, filler])) == 1
    assert len(p.events_payloads([one, filler, one])) == 2
    assert len(p.events_payloads([one, filler + b" "])) == 2  # one byte more: the second frame


def test_only_batch_1_asks_for_batches() -> None:
    assert p.batch_requested({"batch": "1"})
    assert not any(p.batch_requested(q) for q in ({}, {"batch": "0"}, {"batch": "yes"}, {"batch": ""}))


# -- the room's groups of batching sockets, alone --------------------------------------------------------------

class Wire:
    """A socket's transport that keeps what the room writes to it, and when."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[float] = []

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(time.monotonic())

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def frames(self) -> list[dict[str, Any]]:
        """The text frames written (unmasked, as the server sends them), parsed."""
        out, i, data = [], 0, bytes(self.data)
        while i < len(data):
            assert data[i] == 0x81
            n, i = data[i + 1], i + 2
            if n == 126:
                n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
            elif n == 127:
                n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
            out.append(json.loads(data[i:i + n]))
            i += n
        return out

    def seqs(self) -> list[int]:
        return [e["seq"] for f in self.frames() for e in (f["events"] if f["type"] == "events" else [f])]


def socket(room: Room, user: str, *, batch: bool = True) -> tuple[Client, Wire]:
    """A socket joining `room` as a session does: parked (its buffer) until its replay has caught up."""
    wire = Wire()
    request = SimpleNamespace(transport=wire, query={"batch": "1"} if batch else {})

    async def send_str(data: str) -> None:  # the replay's frames go through the WebSocket
        wire.write(text_frame(data))

    client = Client(SimpleNamespace(send_str=send_str), request, user, user, "member")  # type: ignore[arg-type]
    room.clients.add(client)
    return client, wire


async def test_batching_sockets_are_written_in_groups_in_turn_and_miss_nothing() -> None:
    """A room's batching sockets in groups (of two here): each group written in its turn, every socket getting
    every event once, in order, in `events` frames, also those that joined while events streamed and resumed
    from the start, and whichever group they landed in (groups are added as sockets arrive)."""
    async def nothing(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        return []

    room = Room("r", nothing, batch_group=2)
    room.start(0)
    wires: list[Wire] = []
    single, old = socket(room, "old", batch=False)
    for k in range(3):
        client, wire = socket(room, f"b{k}")
        await room.replay(client, 0)
        wires.append(wire)
    await room.replay(single, 0)
    seq, joined = 0, []
    for round_ in range(30):
        room.feed([ev(s) for s in range(seq + 1, seq + 4)])
        seq += 3
        if round_ % 6 == 3:  # one joins mid-stream and resumes from the start (its replay comes from L1)
            client, wire = socket(room, f"j{round_}")
            joined.append(asyncio.create_task(room.replay(client, 0)))
            wires.append(wire)
        await asyncio.sleep(0.004)
    await asyncio.gather(*joined)
    assert len(room.clients.groups) == 4 and all(len(g) <= 2 for g in room.clients.groups)
    await wait_for(lambda: all(len(w.seqs()) >= seq for w in wires), timeout=5)
    for wire in wires:
        assert wire.seqs() == list(range(1, seq + 1))
        assert all(f["type"] == "events" and len(f["events"]) <= p.BATCH_MAX_EVENTS for f in wire.frames())
    assert old.seqs() == list(range(1, seq + 1)) and all(f["type"] == "event" for f in old.frames())
    # In turn: the first two sockets share a group, the third has the next one, written at other moments.
    assert {c.user for c in room.clients.groups[0]} == {"b0", "b1"} and "b2" in {c.user for c in
                                                                             room.clients.groups[1]}
    assert not set(wires[0].writes) & set(wires[2].writes)
    # Events are kept only until every group has been written them.
    assert not room.coalescing or room.coalescing[0][0] > min(room.clients.positions)
    await room.stop()


# -- against real workers -------------------------------------------------------------------------------------

async def test_a_burst_reaches_batching_and_old_clients_alike_in_order_and_whole(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    batchers = [await chat.connect(a, "bea", batch=True), await chat.connect(b, "bob", batch=True)]
    olds = [await chat.connect(a, "otto"), await chat.connect(b, "olga")]
    senders = [await chat.connect(a, "sam"), await chat.connect(b, "sue", batch=True)]
    for client in [*batchers, senders[1]]:
        assert client.welcome["batch"] == {"max_events": p.BATCH_MAX_EVENTS, "max_bytes": p.BATCH_MAX_BYTES,
                                           "max_delay_ms": round(p.BATCH_MAX_DELAY * 1000)}
    assert all("batch" not in c.welcome for c in [*olds, senders[0]])

    # A sender on each worker (each one's events reach the other over NATS), 300 messages each, none waiting.
    acked = await burst(senders, 300)
    assert acked == list(range(1, 601))
    # One more, after the burst: whatever a client has when this arrives is all it will get of the burst.
    await senders[0].send({"type": "send", "cid": "last", "text": "last"})
    last = (await senders[0].expect("ack", cid="last"))["seq"]
    for client in batchers + olds + senders:
        await receive_through(client, last)
        assert client.events() == list(range(1, last + 1))  # every event once, in seq order
    for client in [*batchers, senders[1]]:
        assert not [f for f in client.frames if f["type"] == "event"]  # live events come batched only
        within_bounds(client)
        assert max(len(f["events"]) for f in batch_frames(client)) > 1  # and they were batched
    for client in [*olds, senders[0]]:
        # One frame per event, exactly as before batching existed.
        assert not batch_frames(client)
        assert len([f for f in client.frames if f["type"] == "event"]) == last


async def test_large_events_split_into_frames_within_the_byte_bound(chat: Chat) -> None:
    spec = {"limits": {**FAST_SPEC["limits"], "maxMessageBytes": 65536}}
    a = await chat.worker(spec)
    batcher = await chat.connect(a, "bea", batch=True)
    sender = await chat.connect(a, "sam")
    sizes = [30_000, 30_000, 30_000, 65_536, 10, 10, 20_000, 65_536]
    for i, size in enumerate(sizes):
        await sender.send({"type": "send", "cid": f"big{i}", "text": "é" * (size // 2)})
    acks = [await sender.expect("ack", cid=f"big{i}") for i in range(len(sizes))]
    await receive_through(batcher, acks[-1]["seq"])
    assert batcher.events() == [ack["seq"] for ack in acks]
    within_bounds(batcher)
    # At most two of the 30 kB events fit in 64 KiB, and a 64 kB event travels alone: five frames at the fewest.
    assert len(batch_frames(batcher)) >= 5


async def test_resume_replays_in_batches_then_goes_live(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    sender = await chat.connect(a, "sam")
    acked = await burst([sender], 400)
    # A batching client resumes after seq 50 on the other worker: the replay comes in `events` frames too.
    late = await chat.connect(b, "lea", after=50, batch=True)
    resumed = await late.expect("resumed", after=50)
    assert resumed["last_seq"] >= 50 and resumed["truncated"] is False
    await sender.send({"type": "send", "cid": "live", "text": "live"})
    live = (await sender.expect("ack", cid="live"))["seq"]
    await receive_through(late, live)
    assert late.events() == list(range(51, live + 1)) and acked[-1] == live - 1
    assert not [f for f in late.frames if f["type"] == "event"]
    within_bounds(late)


async def test_clients_joining_during_a_burst_get_every_event_once(chat: Chat) -> None:
    """A socket that connects (or resumes) while events stream in switches from its replay to the live batches
    with no gap and no duplicate: the first batch it is written may hold events its replay already sent."""
    a = await chat.worker()
    sender = await chat.connect(a, "sam")

    async def stream() -> None:
        for i in range(40):  # 40 bursts of 20 sends, each acknowledged before the next
            await burst([sender], 20, tag=f"s{i}-")

    sending = asyncio.create_task(stream())
    joined = []
    while not sending.done():
        joined.append(await chat.connect(a, f"j{len(joined)}", after=0, batch=True))
        joined.append(await chat.connect(a, f"n{len(joined)}", batch=True))
    await sending
    await sender.send({"type": "send", "cid": "last", "text": "last"})
    last = (await sender.expect("ack", cid="last"))["seq"]
    assert len(joined) >= 4
    for k, client in enumerate(joined):
        await receive_through(client, last)
        first = 1 if k % 2 == 0 else client.welcome["last_seq"] + 1  # a resume from 0, or live from its welcome
        assert client.events() == list(range(first, last + 1))
        within_bounds(client)
