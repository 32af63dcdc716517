"""Audio batches from NATS are another pod's word: a follower serves only batches that fit its channel and the
timeline it serves; forged and broken ones published onto the real bus are dropped and counted. What a stream
worker publishes is valid against the event catalog (docs/events.md): now-playing through the platform's channel
stream, deduplicated by its id and readable by the chat user's durable consumer; listener counts; audio."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import nats as nats_py
from nats.aio.msg import Msg

from tests.support.chat import NATS_PASSWORDS, authorized_nats, metric
from tests.support.events import Capture
from tests.support.stream import PLAYLIST_SPEC, now_playing, open_stream, read_body
from tests.support.waiting import wait_for
from veza_core import events
from veza_stream.replication import decode_batch, encode_batch
from veza_stream.transcoder import Chunk

SPEC = {**PLAYLIST_SPEC, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
        "delivery": {"hls": {"enabled": False}}}
MARKER = b"FORGED-AUDIO-FROM-THE-BUS"


async def test_forged_audio_batches_never_reach_a_followers_listeners(tracks: None, start_worker: Any, redis: Any,
                                                                     nats: Any) -> None:
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url}
    leader = start_worker("busy", SPEC, **env)
    await wait_for(lambda: now_playing(leader, "busy")["leader"], timeout=10, message="the first replica leads")
    follower = start_worker("busy", SPEC, **env)
    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, "/stream/busy/mp3")
    assert status == 200
    await read_body(reader, headers, 20_000, 5.0)  # the follower serves the leader's timeline

    forged = {"mp3": [Chunk(MARKER * 20, 2**40, 1152)]}  # hours ahead of what is on air
    nc = await nats_py.connect(nats.url)
    subject = f"veza.t{os.getpid()}.channel.busy.audio"
    try:
        listening = asyncio.create_task(read_body(reader, headers, 10**9, 3.0))
        for _ in range(5):  # a timeline that holds for less than three seconds is not taken up
            for data in (encode_batch(forged, "Forged"), b"VZA1\x00", encode_batch({"evil": []}, "x"),
                         encode_batch({"mp3": []}, "t" * 5000),
                         encode_batch({"mp3": [Chunk(b"x", 0, 2**31)]}, "")):
                await nc.publish(subject, data)
            await asyncio.sleep(0.2)
        await nc.flush()
        body = await listening
    finally:
        await nc.close()
        writer.close()
    assert MARKER not in body and len(body) > 20_000  # the leader's audio went on, the forged never came
    for reason in ("pts_out_of_window", "malformed", "unknown_rendition", "title_too_long", "out_of_bounds"):
        value = await metric(follower.url, "veza_bus_rejected_total", subject_kind="channel.audio", reason=reason)
        assert value >= 1, reason
    assert now_playing(follower, "busy")["title"] != "Forged"


async def test_what_a_stream_worker_publishes_follows_the_catalog(tracks: None, start_worker: Any, nats: Any) -> None:
    platform = f"t{os.getpid()}"
    capture = await Capture().start(nats.url, platform)
    try:
        start_worker("onair", SPEC, VEZA_NATS_URL=nats.url)
        # Both tracks of the playlist (2 s each) go on air, and a listener count comes within 5 s.
        tone_a = await capture.wait_for("channel.nowplaying", channel="onair", title="Tone A")
        tone_b = await capture.wait_for("channel.nowplaying", channel="onair", title="Tone B")
        counts = await capture.wait_for("channel.listeners", channel="onair", timeout=10)
        assert counts["listeners"] == {"mp3": 0}
        for event in (tone_a, tone_b):
            assert event["id"] == f"onair:{round(event['started_at'] * 1000)}" and event["at"] >= event["started_at"]
        assert tone_b["started_at"] > tone_a["started_at"]
        audio = capture.bodies("channel.audio")
        assert audio and all(decode_batch(batch)[0].keys() <= {"mp3"} for batch in audio)
    finally:
        await capture.close()

    # Kept in the platform's channel stream under its id: a republish of the same track start is dropped.
    nc = await nats_py.connect(nats.url)
    try:
        js = nc.jetstream()
        subject = events.CHANNEL_NOWPLAYING.subject(platform, "onair")
        stored = await js.get_last_msg(events.channels_stream(platform), subject)
        assert stored.headers and stored.headers["Nats-Msg-Id"] == events.NowPlaying.model_validate_json(
            stored.data).id
        before = (await js.stream_info(events.channels_stream(platform))).state.messages
        ack = await js.publish(subject, stored.data, headers={"Nats-Msg-Id": stored.headers["Nats-Msg-Id"]})
        assert ack.duplicate and (await js.stream_info(events.channels_stream(platform))).state.messages == before
    finally:
        await nc.close()


async def test_the_chat_user_follows_now_playing_from_the_stream_user(tracks: None, start_worker: Any,
                                                                      tmp_path: Path) -> None:
    """Against a NATS that admits only the users of examples/nats/authorization.conf: the stream worker, signed in
    as the stream user, makes the channel stream and publishes now-playing into it; the chat user reads it through
    a durable consumer."""
    secured = authorized_nats(tmp_path / "secured").start()
    platform = f"t{os.getpid()}"
    chat = await nats_py.connect(secured.url, user="veza-chat", password=NATS_PASSWORDS["VEZA_NATS_CHAT_PASSWORD"])
    try:
        worker = start_worker("secured", SPEC, VEZA_NATS_URL=secured.url, VEZA_NATS_USER="veza-stream",
                              VEZA_NATS_PASSWORD=NATS_PASSWORDS["VEZA_NATS_STREAM_PASSWORD"])
        titles: list[str] = []

        async def heard(msg: Msg) -> None:
            event = events.parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg.data)
            if event is not None:
                titles.append(event.title)

        js = chat.jetstream()
        stream = await events.ensure_channels_stream(js, platform)  # whichever comes first makes it
        task = await events.durable_subscribe(js, stream=stream, subject=events.CHANNEL_NOWPLAYING.subject(
            platform, "secured"), durable="chat-secured", handler=heard)
        try:
            await wait_for(lambda: {"Tone A", "Tone B"} <= set(titles), timeout=15, message="both titles")
        finally:
            task.cancel()
        assert "Authorization Violation" not in worker.logs() and "ermissions" not in worker.logs()
    finally:
        await chat.close()
        secured.stop()
