"""Live ingest with fallback to the playlist and back, on one listener connection."""

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


@pytest.mark.parametrize("fmt,ctype", [("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
async def test_live_source_then_fallback(fallback_track: None, start_worker: Any, fmt: str, ctype: str) -> None:
    worker = start_worker("live", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/live/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 9.0))
    await asyncio.sleep(2.0)  # two seconds of the fallback playlist, heard before the live source
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
            # An Icecast PUT after an HTTP proxy dropped its unframed body.
            ({**BASIC, "Content-Type": "audio/mpeg"}, b"", 400, "empty_source"),
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


async def test_guessing_the_source_password_is_cut_short(fallback_track: None, start_worker: Any) -> None:
    """Five wrong passwords from an address, then 429 with Retry-After for that address alone (even
    with the right password), counted once per request, also for `Expect: 100-continue`."""
    worker = start_worker("guessed", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    url = f"{worker.url}/stream/guessed/source"
    guesses = [{"Content-Type": "audio/mpeg", "Expect": "100-continue",
                "Authorization": "Basic " + base64.b64encode(f"source:guess{i}".encode()).decode()} for i in range(5)]
    async with aiohttp.ClientSession() as session:
        for headers in guesses:
            async with session.put(url, data=b"x", headers=headers) as resp:
                assert resp.status == 401 and (await resp.json())["error"]["code"] == "bad_password"
        for headers in (guesses[0], {**BASIC, "Content-Type": "audio/mpeg"}):
            async with session.put(url, data=b"x", headers=headers) as resp:
                assert resp.status == 429, await resp.text()
                assert (await resp.json())["error"]["code"] == "too_many_attempts"
                assert 1 <= int(resp.headers["Retry-After"]) <= 61
    # Behind the front door the proxy's last X-Forwarded-For entry is the client: counted apart.
    async with aiohttp.ClientSession() as session:
        for client, code in (("203.0.113.9", "bad_password"), ("127.0.0.1, 203.0.113.7", "empty_source")):
            headers = {**(guesses[0] if code == "bad_password" else BASIC), "Content-Type": "audio/mpeg",
                       "X-Forwarded-For": client}
            async with session.put(url, data=b"", headers=headers) as resp:
                assert (await resp.json())["error"]["code"] == code, client
    # Another address is not locked out by this one's guesses.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other, \
            other.put(url, data=b"", headers={**BASIC, "Content-Type": "audio/mpeg"}) as resp:
        assert (await resp.json())["error"]["code"] == "empty_source"  # past the password check
    assert worker.alive()


async def test_unframed_put_as_ffmpeg_sends_it(fallback_track: None, start_worker: Any) -> None:
    """ffmpeg's icecast:// output: PUT with `Expect: 100-continue`, no Content-Length, no chunked encoding, the audio
    until the connection closes."""
    worker = start_worker("ffsrc", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/ffsrc/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 6.0))

    async def put(authorization: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        src_reader, src_writer = await asyncio.open_connection("127.0.0.1", worker.port)
        src_writer.write(("PUT /stream/ffsrc/source HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n"
                          "Expect: 100-continue\r\nConnection: close\r\nHost: 127.0.0.1\r\nIcy-MetaData: 1\r\n"
                          f"Authorization: {authorization}\r\nContent-Type: audio/mpeg\r\nIce-Public: 0\r\n"
                          "Ice-Name: From ffmpeg\r\n\r\n").encode())
        return src_reader, src_writer, await asyncio.wait_for(src_reader.readuntil(b"\r\n\r\n"), 5)

    # Refused before `100 Continue`: a client told to go on would take it as a successful login.
    _, refused, head = await put("Basic " + base64.b64encode(b"source:nope").decode())
    assert head.startswith(b"HTTP/1.1 401 "), head
    refused.close()
    _, src_writer, head = await put(BASIC["Authorization"])
    assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
    await wait_for(lambda: "live source connected" in worker.logs(), timeout=5, message="the first source on air")
    _, second, head = await put(BASIC["Authorization"])
    assert head.startswith(b"HTTP/1.1 409 "), head  # the mount is taken: said before the audio too
    second.close()
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


def source_request(path: str, headers: dict[str, str]) -> bytes:
    """A `SOURCE` request as libshout sends it: HTTP/1.0, and no body framing whatsoever."""
    lines = [f"SOURCE {path} HTTP/1.0", "Host: 127.0.0.1", "User-Agent: libshout/2.4.6",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(("tls", "method"), [(shout.SHOUT_TLS_AUTO, "PUT"), (shout.SHOUT_TLS_DISABLED, "SOURCE")])
async def test_libshout_broadcasts(fallback_track: None, start_worker: Any, tls: int, method: str) -> None:
    """A real source client library. In its default TLS mode it asks `OPTIONS *` first (offering a TLS upgrade, RFC
    2817): answered without one, it goes on in plain HTTP with `PUT`, as to Icecast 2.4. With TLS off it uses the
    legacy `SOURCE` method: a request without credentials (401), the one with them, then it waits for
    `HTTP/1.0 200 OK` and sends the audio until it hangs up."""
    worker = start_worker("legacy", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/legacy/mp3")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 6.0))
    sending = asyncio.create_task(asyncio.to_thread(shout.broadcast, worker.port, "/stream/legacy/source", PASSWORD,
                                                    sine(1000, 4.0), name="From libshout", song="Ünïcode & Song",
                                                    tls=tls))
    await wait_for(lambda: now_playing(worker, "legacy")["title"] == "From libshout", timeout=5,
                   message="its `ice-name` as the title")
    # Halfway through, libshout sends the song title (Icecast's /admin/metadata).
    await wait_for(lambda: now_playing(worker, "legacy")["title"] == "Ünïcode & Song", timeout=5,
                   message="the song title")
    opened, error = await sending
    assert opened == 0, error
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert sum(abs(f - 1000) < 20 for f in freqs) >= 8, freqs
    logs = worker.logs()
    assert f'"method": "{method}", "path": "/stream/legacy/source", "status": 200' in logs, logs[-2000:]
    assert ('"method": "OPTIONS", "path": "*", "status": 200' in logs) == (tls == shout.SHOUT_TLS_AUTO)
    assert '"status": 400' not in logs and "live source connected" in logs
    assert '"path": "/admin/metadata", "status": 200' in logs
    result, error = await asyncio.to_thread(shout.broadcast, worker.port, "/stream/legacy/source", "wrong",
                                            sine(1000, 1.0), tls=tls)

    assert result == shout.SHOUTERR_NOLOGIN
    assert worker.alive()


async def test_bad_source_method_clients_are_refused(fallback_track: None, start_worker: Any) -> None:
    """A `SOURCE` client is told what is wrong while it waits, before it sends audio; the worker keeps serving."""
    worker = start_worker("legacy-guarded", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    wrong = {"Authorization": "Basic " + base64.b64encode(b"source:nope").decode()}
    cases = [
        # libshout 2.4 first probes without credentials, keeping the connection for the real request.
        ({"Content-Type": "audio/mpeg", "Content-Length": "0", "Connection": "Keep-Alive"}, 401,
         "credentials_required"),
        ({**wrong, "Content-Type": "audio/mpeg"}, 401, "bad_password"),
        ({**BASIC, "Content-Type": "video/mp4"}, 415, "unsupported_media_type"),
    ]
    for headers, status, code in cases:
        src_reader, src_writer = await asyncio.open_connection("127.0.0.1", worker.port)
        src_writer.write(source_request("/stream/legacy-guarded/source", headers))
        head = (await asyncio.wait_for(src_reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        assert head.startswith(f"HTTP/1.0 {status} "), head
        length = int(next(line.split(":", 1)[1] for line in head.split("\r\n")
                          if line.lower().startswith("content-length:")))
        assert json.loads(await src_reader.readexactly(length))["error"]["code"] == code
        src_writer.close()
    # Not audio: the 200 is out, so the worker just hangs up (the 400 goes to its log, not after the 200).
    src_reader, src_writer = await asyncio.open_connection("127.0.0.1", worker.port)
    src_writer.write(source_request("/stream/legacy-guarded/source", {**BASIC, "Content-Type": "audio/mpeg"}))
    assert await asyncio.wait_for(src_reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.0 200 OK\r\n\r\n"
    src_writer.write(bytes(range(256)) * 1040)  # just over the probe limit: all read, so no reset on hang-up
    assert await asyncio.wait_for(src_reader.read(), 10) == b""
    src_writer.close()
    status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/legacy-guarded/mp3")
    body = await read_body(reader, headers, 48000, 5.0)
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert status == 200 and sum(abs(f - 440) < 15 for f in freqs) >= 4, freqs  # the fallback is still on air
    assert '"status": 400' in worker.logs() and worker.alive()
    # Title updates (Icecast's /admin/metadata) are refused with the reason.
    async with aiohttp.ClientSession() as session:
        for path, query, headers, status, code in [
            ("/admin/metadata", "mount=/stream/legacy-guarded/source&mode=updinfo&song=x", wrong, 401, "bad_password"),
            ("/admin/metadata", "mount=/stream/other/source&mode=updinfo&song=x", BASIC, 404, "channel_not_found"),
            ("/stream/legacy-guarded/admin/metadata", "mode=updinfo", BASIC, 400, "bad_title"),
            ("/stream/legacy-guarded/admin/metadata", "mode=delete&song=x", BASIC, 400, "unsupported_mode"),
            ("/stream/legacy-guarded/admin/metadata", "mode=updinfo&song=x", BASIC, 409, "source_not_connected"),
        ]:
            async with session.get(f"{worker.url}{path}?{query}", headers=headers) as resp:
                assert resp.status == status and (await resp.json())["error"]["code"] == code, (path, query)
