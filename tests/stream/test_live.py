"""Live ingest with fallback to the playlist and back, on one listener connection."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.stream.audio import decode_pcm, frequencies_over_time, sine
from tests.stream.client import open_stream, read_body

PASSWORD = "hackme-please"
SPEC = {
    "source": {"type": "live", "fallback": {"playlist": {"tracks": ["tests/fallback440.mp3"]}}},
    "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
    "delivery": {"hls": {"enabled": False}},
}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"source:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def fallback_track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/fallback440.mp3", Body=sine(440, 3.0, "mp3"))


async def paced(data: bytes, seconds: float, pieces: int = 40) -> AsyncIterator[bytes]:
    """The body of a source client sending in real time."""
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(seconds / pieces)


@pytest.mark.parametrize("fmt,ctype", [("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
async def test_live_source_then_fallback(fallback_track: None, start_worker: Any, fmt: str, ctype: str) -> None:
    worker = start_worker("live", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/live/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 9.0))
    await asyncio.sleep(2.0)  # fallback playlist on air
    async with aiohttp.ClientSession() as session, session.put(
            f"{worker.url}/stream/live/source", data=paced(sine(1000, 3.0, fmt), 3.0),
            headers={**BASIC, "Content-Type": ctype, "Ice-Name": "Live show"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["seconds"] > 2.5
    body = await listening  # the source hung up: the same connection keeps playing the fallback
    writer.close()
    samples, rate = decode_pcm(body, "mp3")
    freqs = frequencies_over_time(samples, rate, 0.25)
    live = [i for i, f in enumerate(freqs) if abs(f - 1000) < 20]
    assert len(live) >= 8, freqs  # ~3 s of the live source
    before = [f for f in freqs[:live[0]] if f]
    after = [f for f in freqs[live[-1] + 1:] if f]
    assert sum(abs(f - 440) < 15 for f in before) >= 4, freqs
    assert sum(abs(f - 440) < 15 for f in after) >= 4, freqs
    assert worker.alive()


async def test_bad_sources_are_refused_and_the_worker_survives(fallback_track: None, start_worker: Any) -> None:
    worker = start_worker("guarded", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    url = f"{worker.url}/stream/guarded/source"
    mp3 = sine(1000, 1.0)
    async with aiohttp.ClientSession() as session:
        cases = [
            ({"Content-Type": "audio/mpeg"}, mp3, 401, "credentials_required"),
            ({"Content-Type": "audio/mpeg", "Authorization": "Basic " + base64.b64encode(b"source:nope").decode()},
             mp3, 401, "bad_password"),
            ({**BASIC, "Content-Type": "text/plain"}, mp3, 415, "unsupported_media_type"),
            ({**BASIC, "Content-Type": "audio/mpeg"}, bytes(range(256)) * 1500, 400, "undecodable_source"),
            ({"Content-Type": "audio/mpeg", "Authorization": "Bearer not.a.jwt"}, mp3, 503, "auth_unavailable"),
        ]
        for headers, body, status, code in cases:
            async with session.put(url, data=body, headers=headers) as resp:
                assert resp.status == status, (code, await resp.text())
                assert (await resp.json())["error"]["code"] == code
        async with session.put(url, data=b"", headers={**BASIC, "X-Huge": "x" * 70000}) as resp:
            assert 400 <= resp.status < 500
        async with session.get(f"{worker.url}/stream/guarded/nope") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "rendition_not_found"
        async with session.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 200
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/guarded/mp3")
    body = await read_body(reader, headers, 32000, 5.0)
    writer.close()
    assert status == 200 and len(body) >= 32000
    assert worker.alive()


async def test_unframed_put_as_ffmpeg_sends_it(fallback_track: None, start_worker: Any) -> None:
    """ffmpeg's icecast:// output: PUT with `Expect: 100-continue`, no Content-Length, no chunked encoding, the audio
    until the connection closes."""
    worker = start_worker("ffsrc", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/ffsrc/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 6.0))
    src_reader, src_writer = await asyncio.open_connection("127.0.0.1", worker.port)
    src_writer.write(("PUT /stream/ffsrc/source HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n"
                      "Expect: 100-continue\r\nConnection: close\r\nHost: 127.0.0.1\r\nIcy-MetaData: 1\r\n"
                      f"Authorization: {BASIC['Authorization']}\r\nContent-Type: audio/mpeg\r\nIce-Public: 0\r\n"
                      "Ice-Name: From ffmpeg\r\n\r\n").encode())
    assert await asyncio.wait_for(src_reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    await asyncio.sleep(0.5)
    async for piece in paced(sine(1000, 3.0), 3.0):
        src_writer.write(piece)
        await src_writer.drain()
    src_writer.close()  # the end of the broadcast is the end of the connection
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert sum(abs(f - 1000) < 20 for f in freqs) >= 8, freqs
    # The connection took no other request from the audio bytes: the worker logged no 400.
    assert '"status": 400' not in worker.logs()
    assert worker.alive()
