"""Track uploads: probed with PyAV, stored in S3 under tracks/{id}/original, listed and deleted."""

from __future__ import annotations

import asyncio
import io
import math
import os
import tracemalloc
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from tests.support.api import PASSWORD, ApiServer, Client, ServerFactory
from tests.support.waiting import wait_for
from veza_api.tracks import ProbeError, probe
from veza_core.storage import ObjectStore
from veza_stream.probe import ProbeError as StreamProbeError
from veza_stream.probe import probe as stream_probe


def tone(fmt: str, codec: str, seconds: float = 1.0, rate: int = 44100) -> bytes:
    """A short sine wave encoded by PyAV (a real file, as a user would upload)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"  # type: ignore[union-attr]
        samples = int(seconds * rate)
        t = np.arange(samples) / rate
        pcm = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):  # type: ignore[union-attr]
            out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            out.mux(packet)
    return buf.getvalue()


async def _broadcaster(client: Client, admin: Client) -> Client:
    user = await client.register_and_login()
    await admin.put("/api/v1/admin/channels/uploads", {"title": "Uploads"})
    await admin.put(f"/api/v1/channels/uploads/members/{user['user_id']}", {"role": "broadcaster"})
    return client.as_user(user["access_token"])


async def test_upload_probe_store_list_delete(client: Client, admin: Client, api_server: ApiServer) -> None:
    uploader = await _broadcaster(client, admin)
    wav = tone("wav", "pcm_s16le", seconds=2.0)
    made = await uploader.call("POST", "/api/v1/tracks", data=wav, title="Two seconds",
                               headers={"Content-Type": "audio/wav"})
    assert made.status == 201, made.body
    track = made.body
    assert track["codec"] == "pcm_s16le" and abs(track["duration_s"] - 2.0) < 0.05
    assert track["object_key"] == f"tracks/{track['id']}/original" and track["size_bytes"] == len(wav)

    s = api_server.settings
    store = ObjectStore(s.s3_bucket, endpoint_url=s.s3_endpoint, region=s.s3_region)
    assert await store.get(track["object_key"]) == wav
    assert (await store.head(track["object_key"]))["ContentType"] == "audio/wav"

    ogg = await uploader.call("POST", "/api/v1/tracks", data=tone("ogg", "libopus", rate=48000), title="Opus")
    assert ogg.status == 201 and ogg.body["codec"] in ("opus", "libopus") and ogg.body["container"] == "ogg"

    listed = await uploader.get("/api/v1/tracks")
    assert {track["id"], ogg.body["id"]} <= {t["id"] for t in listed.body["tracks"]}
    assert (await uploader.get(f"/api/v1/tracks/{track['id']}")).body == track

    # Derived files (the stream worker's transcodes) go with the track.
    await store.put(f"tracks/{track['id']}/mp3-128.mp3", b"derived")
    listener = client.as_user((await client.register_and_login())["access_token"])
    assert (await listener.delete(f"/api/v1/tracks/{track['id']}")).status == 403
    assert (await uploader.delete(f"/api/v1/tracks/{track['id']}")).status == 204
    assert await store.list(f"tracks/{track['id']}/") == []
    assert (await uploader.get(f"/api/v1/tracks/{track['id']}")).status == 404


async def test_bad_uploads_are_refused(client: Client, admin: Client, make_api: ServerFactory) -> None:
    uploader = await _broadcaster(client, admin)
    wav = tone("wav", "pcm_s16le")
    cases = [
        (b"\x00\x01garbage" * 500, (415, 422)),
        (wav[: len(wav) // 50], (201, 422)),  # truncated: either decodes what is there or is refused, never 500
        (b"", (422,)),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000, (415, 422)),
    ]
    for body, expected in cases:
        reply = await uploader.call("POST", "/api/v1/tracks", data=body, title="bad")
        assert reply.status in expected, (body[:10], reply.status, reply.body)
    no_title = await uploader.call("POST", "/api/v1/tracks", data=wav)
    assert no_title.status == 422
    listener = client.as_user((await client.register_and_login())["access_token"])
    assert (await listener.call("POST", "/api/v1/tracks", data=wav, title="x")).status == 403
    assert (await client.call("POST", "/api/v1/tracks", data=wav, title="x")).status == 401

    small = await make_api(max_track_bytes=10_000)
    root = small.client.as_user((await small.client.register_and_login("root@veza.test"))["access_token"])
    big = await root.call("POST", "/api/v1/tracks", data=tone("wav", "pcm_s16le", seconds=1.0), title="big")
    assert big.status == 413 and big.body["error"]["code"] == "body_too_large"

    async def stream() -> object:
        for _ in range(20):
            yield b"\x00" * 1000

    async with root.session.post(root.base + "/api/v1/tracks", params={"title": "chunked"}, data=stream(),
                                 headers={"Authorization": f"Bearer {root.token}"}) as resp:
        assert resp.status == 413


def test_an_upload_naming_other_files_is_refused(tmp_path: Path) -> None:
    """An ffconcat "audio file" makes libavformat read the files it names (here a neighbour in the
    upload directory): only the demuxers of accepted containers may probe an upload."""
    neighbour = tmp_path / "someone-elses.wav"
    with wave.open(str(neighbour), "wb") as out:  # one second of a 440 Hz tone, 16-bit mono
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True)
                                 for i in range(8000)))
    upload = tmp_path / "upload"
    upload.write_text(f"ffconcat version 1.0\nfile {neighbour.name}\n")
    with pytest.raises(ProbeError) as refused:
        probe(str(upload))
    # Refused when opened, before any demuxer reads the neighbour (the concat demuxer used to read
    # and decode it, and the upload fell only on its missing duration).
    assert (refused.value.status, refused.value.message) == (422, "the file is not readable audio")
    assert probe(str(neighbour)).container == "wav"  # the same audio, uploaded itself, is fine
    with pytest.raises(StreamProbeError):
        stream_probe(upload.read_bytes())


async def test_concurrent_uploads_are_bounded(client: Client, admin: Client, make_api: ServerFactory) -> None:
    """Each upload holds a temporary file and its parts in memory: with no bound, enough slow uploads at
    once exhausted the API's memory. Beyond `max_concurrent_uploads` an upload is refused at once."""
    await _broadcaster(client, admin)  # the channel and the role live in the shared database
    user = await client.register_and_login()
    await admin.put(f"/api/v1/channels/uploads/members/{user['user_id']}", {"role": "broadcaster"})
    server = await make_api(max_concurrent_uploads=1)
    login = await server.client.post("/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    uploader = server.client.as_user(login.body["access_token"])
    wav = tone("wav", "pcm_s16le", seconds=2.0)
    finish = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield wav[:4096]
        await finish.wait()
        yield wav[4096:]

    url = f"{server.client.base}/api/v1/tracks?title=Slow"
    headers = {"Authorization": f"Bearer {uploader.token}", "X-Forwarded-For": uploader.ip}
    async with aiohttp.ClientSession() as http:
        first = asyncio.ensure_future(http.post(url, data=slowly(), headers=headers))

        async def slot_taken() -> bool:
            async with http.get(f"{server.client.base}/metrics") as resp:
                return "veza_api_uploads_in_progress 1.0" in await resp.text()

        await wait_for(slot_taken, timeout=10, message="the slow upload holds its slot")
        busy = await uploader.call("POST", "/api/v1/tracks", data=wav, title="Second")
        assert busy.status == 503 and busy.body["error"]["code"] == "uploads_busy", busy.body
        assert busy.headers["Retry-After"] == "5"
        finish.set()
        async with await first as done:
            assert done.status == 201, await done.text()
    again = await uploader.call("POST", "/api/v1/tracks", data=wav, title="Second")
    assert again.status == 201, again.body


async def test_uploads_reach_s3_in_parts(api_server: ApiServer, tmp_path: Path) -> None:
    """The stored file is sent in 8 MiB parts: what one upload holds stays bounded however large the
    track (it read the whole file into memory, then sent it in one PUT)."""
    s = api_server.settings
    store = ObjectStore(s.s3_bucket, endpoint_url=s.s3_endpoint, region=s.s3_region)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))
    tracemalloc.start()
    try:
        await store.put_file("tests/parts/big.bin", str(big), "application/octet-stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 1024 * 1024, f"uploading 40 MiB held {peak / 2**20:.1f} MiB"
    head = await store.head("tests/parts/big.bin")
    assert head is not None and head["ContentLength"] == 40 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-5"), head["ETag"]  # a multipart upload of 5 parts
    await store.delete("tests/parts/big.bin")
