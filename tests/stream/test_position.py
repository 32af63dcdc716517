"""Stream position (docs/streaming.md, "Stream position"): what a player learns of the stream time of what it
plays, checked against the encoder's clock (the worker runs on this machine's clock): the progressive response's
`X-Veza-Stream-Time` plus the seconds received, and HLS's `#EXT-X-PROGRAM-DATE-TIME`; two replicas give the same
audio the same stream time."""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from datetime import datetime
from typing import Any

from tests.support.audio import decode_pcm
from tests.support.stream import listen, now_playing
from tests.support.waiting import wait_for

# No source connected: the encoder puts silence on air, paced by its clock like any source.
SPEC: dict[str, Any] = {"source": {"type": "live"},
                        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
                        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}}}


def playlist(url: str) -> list[tuple[int, float, float]]:
    """(sequence, program date-time as Unix seconds, duration) of every segment a media playlist lists."""
    with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - a loopback test URL
        text = r.read().decode()
    out, pdt, duration = [], None, None
    sequence = int(next(line for line in text.splitlines() if line.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:"):].rstrip(","))
        elif line and not line.startswith("#"):
            assert pdt is not None and duration is not None, f"a segment without a program date-time:\n{text}"
            out.append((int(line.split(".")[0]), pdt, duration))
            pdt = duration = None
    assert [s for s, _, _ in out] == list(range(sequence, sequence + len(out)))
    return out


async def heard_until(port: int, path: str, seconds: float) -> tuple[float, float]:
    """Listen for `seconds`: (the stream time of the last sample received, by the response header and the audio
    received, and the clock when it was received)."""
    status, headers, body = await listen("127.0.0.1", port, path, seconds)
    received = time.time()
    assert status == 200
    samples, rate = decode_pcm(body, "mp3")
    return float(headers["x-veza-stream-time"]) + len(samples) / rate, received


async def test_progressive_and_hls_positions_follow_the_encoders_clock(start_worker: Any) -> None:
    worker = start_worker("pos", SPEC)
    url = f"{worker.url}/stream/pos/hls/mp3/index.m3u8"
    await wait_for(lambda: len(playlist(url)) >= 2, timeout=20, message="two segments listed")

    # Progressive: the first byte's stream time plus what was received is the live edge, now (within the encoder's
    # lead over real time, 0.3 s, and the feed's write interval, 0.25 s, that hold audio back).
    position, received = await heard_until(worker.port, "/stream/pos/mp3", 3.0)
    assert -0.8 < position - received < 0.5, position - received

    # HLS: segments follow each other on the stream-time line, and the newest one ends now when it appears.
    segments = playlist(url)
    for (_, pdt, duration), (_, following, _) in itertools.pairwise(segments):
        assert abs(pdt + duration - following) < 0.002
    newest = segments[-1][0]
    appeared = await wait_for(lambda: next((s for s in playlist(url) if s[0] == newest + 1), None), timeout=5,
                              interval=0.02, message="the next segment")
    seen = time.time()
    assert -1.0 < appeared[1] + appeared[2] - seen < 0.5, appeared[1] + appeared[2] - seen


async def test_two_replicas_give_the_same_audio_the_same_stream_time(start_worker: Any, redis: Any,
                                                                     nats: Any) -> None:
    env = {"VEZA_REDIS_URL": redis.url, "VEZA_NATS_URL": nats.url}
    leader = start_worker("pos2", SPEC, **env)
    await wait_for(lambda: now_playing(leader, "pos2")["leader"], timeout=10, message="the first replica leads")
    follower = start_worker("pos2", SPEC, **env)
    assert not now_playing(follower, "pos2")["leader"]
    urls = [f"{w.url}/stream/pos2/hls/mp3/index.m3u8" for w in (leader, follower)]
    await wait_for(lambda: len(playlist(urls[1])) >= 3, timeout=20, message="the follower lists segments")

    lists = [{s: (pdt, d) for s, pdt, d in playlist(u)} for u in urls]
    common = set(lists[0]) & set(lists[1])
    assert common
    for sequence in common:  # the leader's epoch travels with its audio: the same segment, the same time
        assert abs(lists[0][sequence][0] - lists[1][sequence][0]) < 0.001

    heard = await asyncio.gather(*(heard_until(w.port, "/stream/pos2/mp3", 3.0) for w in (leader, follower)))
    (p1, r1), (p2, r2) = heard
    assert abs((p1 - r1) - (p2 - r2)) < 0.4, heard
