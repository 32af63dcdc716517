"""Two replicas: a live source sent to the follower reaches the leader; listener limits count across replicas."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from tests.support import shout
from tests.support.audio import decode_pcm, frequencies_over_time, sine
from tests.support.stream import now_playing, open_stream, paced, read_body
from tests.support.waiting import wait_for
from veza_local.services import RedisService

PASSWORD = "relay-me-please"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"source:{PASSWORD}".encode()).decode()}


async def two_replicas(start_worker: Any, channel: str, spec: dict[str, Any], env: dict[str, str]) -> list[Any]:
    """[leader, follower]: the first replica started is elected before the second starts."""
    first = start_worker(channel, spec, **env)
    await wait_for(lambda: now_playing(first, channel)["leader"], timeout=10, message="the first replica leads")
    second = start_worker(channel, spec, **env)
    assert not now_playing(second, channel)["leader"]
    return [first, second]


async def test_live_source_on_a_follower_is_forwarded_to_the_leader(start_worker: Any, redis: Any, nats: Any) -> None:
    spec = {"source": {"type": "live"}, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": False}}}
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url, "VEZA_SOURCE_PASSWORD": PASSWORD}
    leader, follower = await two_replicas(start_worker, "fwd", spec, env)
    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, "/stream/fwd/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 6.0))
    async with aiohttp.ClientSession() as session:
        # Bad credentials are refused by the follower itself, before anything is forwarded.
        async with session.put(f"{follower.url}/stream/fwd/source", data=b"x",
                               headers={"Content-Type": "audio/mpeg", "Authorization": "Basic eDp5"}) as resp:
            assert resp.status == 401
        async with session.put(f"{follower.url}/stream/fwd/source", data=paced(sine(1000, 3.0), 3.0),
                               headers={**BASIC, "Content-Type": "audio/mpeg", "Ice-Name": "Forwarded"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["seconds"] > 2.5  # the leader decoded it
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert sum(abs(f - 1000) < 20 for f in freqs) >= 8, freqs  # the leader encoded it, the follower relayed it
    assert "live source forwarded to the leader" in follower.logs()
    assert "live source connected" in leader.logs() and "live source connected" not in follower.logs()
    # A legacy `SOURCE` client (libshout with TLS off) on the follower reaches the leader too, as a PUT.
    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, "/stream/fwd/mp3")
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 4.0))
    sending = asyncio.create_task(asyncio.to_thread(
        shout.broadcast, follower.port, "/stream/fwd/source", PASSWORD, sine(660, 3.0), song="Via the follower",
        tls=shout.SHOUT_TLS_DISABLED))
    # The title update (halfway) went to the follower too, which passed it on.
    await wait_for(lambda: now_playing(leader, "fwd")["title"] == "Via the follower", timeout=5,
                   message="the leader has the title sent to the follower")
    result, error = await sending
    assert result == 0, error
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert sum(abs(f - 660) < 20 for f in freqs) >= 6, freqs
    assert '"method": "SOURCE", "path": "/stream/fwd/source", "status": 200' in follower.logs()


@pytest.mark.parametrize(("fmt", "ctype"), [("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
async def test_a_forwarded_source_survives_a_leader_change(start_worker: Any, redis: Any, nats: Any, fmt: str,
                                                          ctype: str) -> None:
    """The leader taking a source forwarded by a follower is killed: the follower is elected and puts the rest of
    the broadcast on air itself (an Ogg source resumes behind its header pages); the source client notices nothing."""
    spec = {"source": {"type": "live"}, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": False}}}
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url, "VEZA_SOURCE_PASSWORD": PASSWORD,
           "VEZA_STREAM_LEADER_TTL": "1.5"}
    leader, follower = await two_replicas(start_worker, f"survive-{fmt}", spec, env)
    status, headers, reader, writer = await open_stream("127.0.0.1", follower.port, f"/stream/survive-{fmt}/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 10.0))
    async with aiohttp.ClientSession() as session:
        broadcast = asyncio.create_task(session.put(
            f"{follower.url}/stream/survive-{fmt}/source", data=paced(sine(1000, 9.0, fmt), 9.0, 90),
            headers={**BASIC, "Content-Type": ctype}))
        await asyncio.sleep(3.0)  # the point: the leader dies three seconds into the broadcast
        leader.kill()
        async with await broadcast as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["seconds"] > 3.0  # what the follower decoded after it took over
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    tone = [abs(f - 1000) < 20 for f in freqs]
    # From the first tone window to the end of the broadcast: what the takeover lost (lock TTL 1.5 s: the follower's
    # listeners wait, then the new encoder goes on at the same timestamp with the bytes the source sent meanwhile).
    assert True in tone[:16] and tone[-12:] == [True] * 12, freqs
    assert tone[tone.index(True):].count(False) <= 4, freqs
    logs = follower.logs()
    assert "leader lost during a forwarded source" in logs and "live source connected" in logs
    assert now_playing(follower, f"survive-{fmt}")["leader"] is True


@pytest.fixture(scope="module")
def track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/capped440.mp3", Body=sine(440, 3.0, "mp3"))


async def test_listener_limit_counts_every_replica(track: None, start_worker: Any, service_factory: Any,
                                                   nats: Any) -> None:
    redis = service_factory(RedisService)  # a private Redis: this test stops it
    spec = {"source": {"type": "playlist", "playlist": {"tracks": ["tests/capped440.mp3"]}},
            "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": False}}, "limits": {"maxListeners": 2}}
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url}
    a = start_worker("capped", spec, **env)
    b = start_worker("capped", spec, **env)
    held = [await open_stream("127.0.0.1", w.port, "/stream/capped/mp3") for w in (a, b)]
    assert [h[0] for h in held] == [200, 200]
    await wait_for(lambda: all(now_playing(w, "capped")["listenersTotal"] == 2 for w in (a, b)), timeout=10,
                   message="each replica counts the other's listener (heartbeats)")
    for worker in (a, b):  # one listener on each replica: the channel is full
        status, _, body = await _get(worker.port, "/stream/capped/mp3")
        assert status == 503 and json.loads(body)["error"]["code"] == "listener_limit"
    # Redis goes away: each replica applies the limit to its own listeners (1 of 2): both accept again.
    redis.stop()
    await wait_for(lambda: all(now_playing(w, "capped")["listenersTotal"] == 1 for w in (a, b)), timeout=10,
                   message="each replica counts its own listeners alone")
    for worker in (a, b):
        status, _, _ = await _get(worker.port, "/stream/capped/mp3")
        assert status == 200
    for h in held:
        h[3].close()
    assert a.alive() and b.alive()


async def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    status, headers, reader, writer = await open_stream("127.0.0.1", port, path)
    body = await read_body(reader, headers, 2000, 1.5) if status == 200 else await reader.read()
    writer.close()
    return status, headers, body
