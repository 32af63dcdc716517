"""Audio batches from NATS are another pod's word: a follower serves only batches that fit its channel and the
timeline it serves; forged and broken ones published onto the real bus are dropped and counted."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats as nats_py

from tests.support.chat import metric
from tests.support.stream import PLAYLIST_SPEC, now_playing, open_stream, read_body
from tests.support.waiting import wait_for
from veza_stream.replication import encode_batch
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
