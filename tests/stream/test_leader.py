"""One encoder across replicas: the follower serves the leader's stream, and takes over when the leader dies."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest

from tests.support.audio import decode_pcm, dominant_frequency, frequencies_over_time, sine
from tests.support.stream import listen, now_playing, open_stream, read_body
from tests.support.waiting import wait_for

SPEC = {"source": {"type": "playlist", "playlist": {"tracks": ["tests/leader330.mp3"]}},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}}}


@pytest.fixture(scope="module")
def track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/leader330.mp3", Body=sine(330, 3.0, "mp3"))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310
        return bytes(r.read())


async def test_leader_killed_follower_continues(track: None, start_worker: Any, redis: Any, nats: Any) -> None:
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url, "VEZA_STREAM_LEADER_TTL": "1.5"}
    first = start_worker("relay-one", SPEC, **env)
    await wait_for(lambda: now_playing(first, "relay-one")["leader"], timeout=10, message="the first replica leads")
    second = start_worker("relay-one", SPEC, **env)
    roles = [now_playing(first, "relay-one")["leader"], now_playing(second, "relay-one")["leader"]]
    assert roles == [True, False], roles  # exactly one encoder
    leader, follower = first, second

    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, "/stream/relay-one/mp3")
    assert status == 200
    before = await read_body(reader, headers, 10**9, 2.0)  # the follower relays the leader's stream
    leader.kill()
    killed_at = time.monotonic()
    after = await read_body(reader, headers, 10**9, 6.0)  # the same connection, across the takeover
    writer.close()
    assert now_playing(follower, "relay-one")["leader"] is True
    for body in (before, after):
        samples, rate = decode_pcm(body, "mp3")
        freqs = frequencies_over_time(samples, rate, 0.25)
        assert sum(abs(f - 330) < 15 for f in freqs) >= len(freqs) - 2, freqs
    samples, rate = decode_pcm(after, "mp3")
    # 6 s of listening minus the takeover gap (lock TTL 1.5 s) is still several seconds of audio.
    assert len(samples) / rate >= 3.5, len(samples) / rate
    assert time.monotonic() - killed_at < 10
    # HLS on the new leader continues the sequence numbers it served as a follower.
    with urllib.request.urlopen(f"{follower.url}/stream/relay-one/hls/mp3/index.m3u8", timeout=3) as r:  # noqa: S310
        playlist = r.read().decode()
    sequences = [int(line.split(".")[0]) for line in playlist.splitlines() if line and not line.startswith("#")]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences) and sequences[0] > 0


async def test_a_replica_started_late_serves_ogg_and_fmp4(track: None, start_worker: Any, redis: Any,
                                                         nats: Any) -> None:
    """The codec header (OpusHead) went out when the encoder started; a replica that came later still needs it, for
    Ogg listeners and for the HLS init segment: the leader repeats it with every batch, receivers drop repeats."""
    spec = {**SPEC, "renditions": [{"name": "opus", "codec": "opus", "bitrateKbps": 64}]}
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url}
    leader = start_worker("late", spec, **env)
    await wait_for(lambda: now_playing(leader, "late")["leader"], timeout=10, message="the first replica leads")
    await asyncio.sleep(2.0)  # the point: the follower starts well after the encoder sent its codec header
    follower = start_worker("late", spec, **env)
    assert now_playing(leader, "late")["leader"] and not now_playing(follower, "late")["leader"]
    status, _, body = await listen("127.0.0.1", follower.port, "/stream/late/opus", 3.0)
    assert status == 200 and body.startswith(b"OggS") and body.count(b"OpusHead") == 1
    samples, rate = decode_pcm(body, "ogg")
    freqs = frequencies_over_time(samples, rate, 0.25)
    assert len(samples) / rate >= 2.5 and sum(abs(f - 330) < 15 for f in freqs) >= len(freqs) - 1, freqs
    base = f"{follower.url}/stream/late/hls/opus"
    playlist = fetch(f"{base}/index.m3u8").decode()
    uris = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert uris, playlist
    # The same segment from both replicas, byte for byte.
    assert fetch(f"{base}/{uris[-1]}") == fetch(f"{leader.url}/stream/late/hls/opus/{uris[-1]}")
    samples, rate = decode_pcm(fetch(f"{base}/init.mp4") + fetch(f"{base}/{uris[-1]}"), "mp4")
    assert abs(len(samples) / rate - 1.0) < 0.06 and abs(dominant_frequency(samples, rate) - 330) < 15
