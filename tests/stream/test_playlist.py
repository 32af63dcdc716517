"""Playlist from S3 → transcoder → progressive listeners of every rendition, ICY metadata, HLS."""

from __future__ import annotations

import asyncio
import itertools
import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.audio import decode_pcm, dominant_frequency, frequencies_over_time, packet_times
from tests.support.stream import PLAYLIST_SPEC as SPEC
from tests.support.stream import listen
from tests.support.waiting import wait_for


def get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (http to loopback)
        return r.status, r.read(), r.headers.get("Content-Type", "")


async def test_every_rendition_plays_the_playlist(tracks: None, start_worker: Any) -> None:
    worker = start_worker("radio", SPEC)
    results = await asyncio.gather(*(listen("127.0.0.1", worker.port, f"/stream/radio/{r}", 6.0)
                                     for r in ("mp3", "aac", "opus")))
    for (status, headers, body), (rendition, fmt, ctype) in zip(
            results, [("mp3", "mp3", "audio/mpeg"), ("aac", "aac", "audio/aac"), ("opus", "ogg", "audio/ogg")],
            strict=True):
        assert status == 200 and headers["content-type"] == ctype, rendition
        samples, rate = decode_pcm(body, fmt)
        seconds = len(samples) / rate
        # 6 s of listening plus up to the 2 s burst and the encoder's 0.3 s lead.
        assert 5.0 <= seconds <= 8.8, (rendition, seconds)
        freqs = frequencies_over_time(samples, rate, 0.25)
        near_a = sum(abs(f - 440) < 15 for f in freqs)
        near_b = sum(abs(f - 880) < 15 for f in freqs)
        # Both tracks (2 s each, alternating) are heard, and almost nothing else (gapless: no silence between).
        assert near_a >= 4 and near_b >= 4, (rendition, freqs)
        assert near_a + near_b >= len(freqs) - 3, (rendition, freqs)
    assert worker.alive()


async def test_icy_metadata_at_metaint(tracks: None, start_worker: Any) -> None:
    worker = start_worker("icy", SPEC, VEZA_STREAM_METAINT="4000")
    status, headers, body = await listen("127.0.0.1", worker.port, "/stream/icy/mp3", 5.0,
                                         headers={"Icy-MetaData": "1"})
    assert status == 200 and headers["icy-metaint"] == "4000"
    audio = bytearray()
    titles = []
    pos = 0
    while pos + 4000 < len(body):
        audio += body[pos:pos + 4000]
        length = body[pos + 4000] * 16
        block = body[pos + 4001:pos + 4001 + length]
        if length:
            match = re.fullmatch(rb"StreamTitle='(.*)';\x00*", block)
            assert match, block
            titles.append(match.group(1).decode())
        pos += 4001 + length
    assert len(audio) >= 4000 * 15
    assert titles and set(titles) <= {"Tone A", "Tone B"}
    samples, rate = decode_pcm(bytes(audio), "mp3")
    assert abs(dominant_frequency(samples[: rate // 2], rate) - 440) < 15 or \
        abs(dominant_frequency(samples[: rate // 2], rate) - 880) < 15
    # Without the request header, no metadata is interleaved.
    status, headers, plain = await listen("127.0.0.1", worker.port, "/stream/icy/mp3", 1.0)
    assert "icy-metaint" not in headers and b"StreamTitle" not in plain


async def test_hls_playlists_and_segments(tracks: None, start_worker: Any) -> None:
    worker = start_worker("hls", SPEC)

    def segments_listed(rendition: str) -> int:
        lines = get(f"{worker.url}/stream/hls/hls/{rendition}/index.m3u8")[1].decode().splitlines()
        return sum(1 for line in lines if line and not line.startswith("#"))

    await wait_for(lambda: all(segments_listed(r) >= 3 for r in ("mp3", "aac", "opus")), timeout=15,
                   interval=0.2, message="three segments of every rendition")
    status, body, ctype = get(f"{worker.url}/stream/hls/hls/master.m3u8")
    assert status == 200 and ctype.startswith("application/vnd.apple.mpegurl")
    master = body.decode().splitlines()
    assert master[0] == "#EXTM3U"
    variants = [line for line in master if line and not line.startswith("#")]
    assert variants == ["mp3/index.m3u8", "aac/index.m3u8", "opus/index.m3u8"]
    assert 'CODECS="opus"' in master[-2]
    for variant, fmt in zip(variants, ("mp3", "aac", "mp4"), strict=True):
        rendition = variant.split("/")[0]
        _, body, _ = get(f"{worker.url}/stream/hls/hls/{variant}")
        lines = body.decode().splitlines()
        target = int(next(line.split(":")[1] for line in lines if line.startswith("#EXT-X-TARGETDURATION")))
        assert target == 1
        durations = [float(line[8:].rstrip(",")) for line in lines if line.startswith("#EXTINF:")]
        uris = [line for line in lines if line and not line.startswith("#")]
        assert len(uris) >= 3 and len(durations) == len(uris)
        assert all(0.9 <= d <= 1.1 and round(d) <= target for d in durations), durations
        first = int(next(line.split(":")[1] for line in lines if line.startswith("#EXT-X-MEDIA-SEQUENCE")))
        assert [int(u.split(".")[0]) for u in uris] == list(range(first, first + len(uris)))
        init = b""
        if fmt == "mp4":  # Opus: fMP4 segments behind the init segment named by EXT-X-MAP
            assert '#EXT-X-MAP:URI="init.mp4"' in lines and "#EXT-X-VERSION:6" in lines
            status, init, ctype = get(f"{worker.url}/stream/hls/hls/{rendition}/init.mp4")
            assert status == 200 and ctype == "audio/mp4" and init[4:8] == b"ftyp" and b"dOps" in init
        audio, segments = [], []
        for uri in uris:
            _, seg, ctype = get(f"{worker.url}/stream/hls/hls/{rendition}/{uri}")
            if fmt == "mp4":
                assert uri.endswith(".m4s") and ctype == "audio/mp4" and seg[4:8] == b"moof"
            else:
                assert seg.startswith(b"ID3")  # packed audio carries its timestamp in an ID3 PRIV frame
            samples, rate = decode_pcm(init + seg, fmt)
            assert abs(len(samples) / rate - durations[len(audio)]) < 0.06, (rendition, uri)
            audio.append(samples)
            segments.append(seg)
        assert {round(dominant_frequency(a, rate) / 440) for a in audio} <= {1, 2}, rendition
        # The segment being cut is awaited (another replica may list it first); one further ahead is refused.
        listed = [line for line in get(f"{worker.url}/stream/hls/hls/{variant}")[1].decode().splitlines()
                  if line and not line.startswith("#")]
        newest, ext = int(listed[-1].split(".")[0]), listed[-1].split(".")[1]
        status, seg, _ = get(f"{worker.url}/stream/hls/hls/{rendition}/{newest + 1}.{ext}")
        assert status == 200 and len(seg) > 100, (rendition, status)
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"{worker.url}/stream/hls/hls/{rendition}/{newest + 5}.{ext}")
        assert refused.value.code == 404
        if fmt == "mp4":
            # The fragments' decode times follow on from each other: one timeline across segments.
            times = packet_times(init + b"".join(segments))
            assert len(times) >= 50 * len(segments) - 1, len(times)  # 20 ms packets
            assert all(b == a + d for (a, d), (b, _) in itertools.pairwise(times)), times


async def test_ll_hls_parts_and_blocking_reload(tracks: None, start_worker: Any) -> None:
    spec = {**SPEC, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128},
                                   {"name": "opus", "codec": "opus", "bitrateKbps": 64}],
            "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 2, "partDurationSeconds": 0.5}}}
    worker = start_worker("lowlat", spec)
    base = f"{worker.url}/stream/lowlat/hls/mp3"

    def segment_and_parts(url: str) -> bool:
        lines = get(url)[1].decode().splitlines()
        return any(line and not line.startswith("#") for line in lines) and any(
            line.startswith("#EXT-X-PART:") for line in lines)

    await wait_for(lambda: all(segment_and_parts(f"{worker.url}/stream/lowlat/hls/{r}/index.m3u8")
                               for r in ("mp3", "opus")), timeout=15, interval=0.2,
                   message="a whole segment and parts of both renditions")
    _, body, _ = get(f"{base}/index.m3u8")
    lines = body.decode().splitlines()
    assert "#EXT-X-PART-INF:PART-TARGET=0.500" in lines
    assert any(line.startswith("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES") for line in lines)
    parts = [re.match(r'#EXT-X-PART:DURATION=([\d.]+),URI="(\d+)\.(\d+)\.mp3"', line) for line in lines]
    parts = [m for m in parts if m]
    assert parts, lines
    hint = next(line for line in lines if line.startswith("#EXT-X-PRELOAD-HINT"))
    sequence, index = map(int, re.search(r'URI="(\d+)\.(\d+)\.mp3"', hint).groups())  # type: ignore[union-attr]
    for match in parts:
        _, data, _ = get(f"{base}/{match.group(2)}.{match.group(3)}.mp3")
        assert data.startswith(b"ID3")
        samples, rate = decode_pcm(data, "mp3")
        assert abs(len(samples) / rate - float(match.group(1))) < 0.05 and float(match.group(1)) <= 0.55
    # The preload hint's part is answered when it has been cut; a blocking reload waits for it to be listed.
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, data, _ = await loop.run_in_executor(None, get, f"{base}/{sequence}.{index}.mp3")
    assert data.startswith(b"ID3") and loop.time() - started < 1.6
    _, body, _ = await loop.run_in_executor(
        None, get, f"{base}/index.m3u8?_HLS_msn={sequence}&_HLS_part={index + 1}")
    assert f'URI="{sequence}.{index + 1}.mp3"' in body.decode() or f"\n{sequence}.mp3" in body.decode()
    status, _, _ = await listen("127.0.0.1", worker.port, "/stream/lowlat/hls/mp3/index.m3u8?_HLS_msn=999999", 1.0)
    assert status == 400
    # Whole segments are still there, as without LL-HLS.
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris and all(u.endswith(".mp3") and u.count(".") == 1 for u in uris)
    # Opus parts are fMP4 fragments, each playable behind the init segment.
    _, body, _ = get(f"{worker.url}/stream/lowlat/hls/opus/index.m3u8")
    parts = [m for m in (re.match(r'#EXT-X-PART:DURATION=([\d.]+),URI="(\d+\.\d+\.m4s)"', line)
                         for line in body.decode().splitlines()) if m]
    assert parts and '#EXT-X-MAP:URI="init.mp4"' in body.decode()
    _, init, _ = get(f"{worker.url}/stream/lowlat/hls/opus/init.mp4")
    for match in parts:
        _, data, _ = get(f"{worker.url}/stream/lowlat/hls/opus/{match.group(2)}")
        samples, rate = decode_pcm(init + data, "mp4")
        assert data[4:8] == b"moof" and abs(len(samples) / rate - float(match.group(1))) < 0.05
