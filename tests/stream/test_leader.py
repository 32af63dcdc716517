"""One encoder across replicas: the follower serves the leader's stream, and takes over when the leader dies."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest

from tests.stream.audio import decode_pcm, frequencies_over_time, sine
from tests.stream.client import open_stream, read_body

SPEC = {"source": {"type": "playlist", "playlist": {"tracks": ["tests/leader330.mp3"]}},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}}}


@pytest.fixture(scope="module")
def track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/leader330.mp3", Body=sine(330, 3.0, "mp3"))


def now_playing(worker: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"{worker.url}/stream/relay-one/now-playing", timeout=3) as r:  # noqa: S310
        return dict(json.loads(r.read()))


async def test_leader_killed_follower_continues(track: None, start_worker: Any, redis: Any, nats: Any) -> None:
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url, "VEZA_STREAM_LEADER_TTL": "1.5"}
    first = start_worker("relay-one", SPEC, **env)
    await asyncio.sleep(1.0)
    second = start_worker("relay-one", SPEC, **env)
    await asyncio.sleep(1.0)
    roles = [now_playing(first)["leader"], now_playing(second)["leader"]]
    assert roles == [True, False], roles  # exactly one encoder
    leader, follower = first, second

    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, "/stream/relay-one/mp3")
    assert status == 200
    before = await read_body(reader, headers, 10**9, 2.0)  # the follower relays the leader's stream
    leader.kill()
    killed_at = time.monotonic()
    after = await read_body(reader, headers, 10**9, 6.0)  # the same connection, across the takeover
    writer.close()
    assert now_playing(follower)["leader"] is True
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
