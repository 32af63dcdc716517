"""Track ingestion: probe uploads, refuse bad ones with 4xx, store the original and renditions in S3."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.audio import decode_pcm, dominant_frequency, sine
from tests.support.waiting import wait_for

PASSWORD = "upload-secret"
SPEC = {"source": {"type": "playlist", "playlist": {"tracks": []}},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128},
                       {"name": "opus", "codec": "opus", "bitrateKbps": 64}]}
AUTH = {"Authorization": "Basic " + base64.b64encode(f"api:{PASSWORD}".encode()).decode()}


async def test_upload_probe_and_store(bucket: Any, start_worker: Any) -> None:
    worker = start_worker("library", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    url = f"{worker.url}/stream/library/tracks"
    good = sine(660, 2.0, "mp3", title="Six Sixty")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=good, headers=AUTH) as resp:
            assert resp.status == 201, await resp.text()
            info = await resp.json()
        assert info["codec"].startswith("mp3") and abs(info["duration"] - 2.0) < 0.1 and info["title"] == "Six Sixty"
        assert len(info["id"]) == 32 and info["original"] == f"channels/library/tracks/{info['id']}/original"
        original = bucket.get_object(Bucket="veza-stream-tests", Key=info["original"])["Body"].read()
        assert original == good
        for rendition, fmt in (("mp3", "mp3"), ("opus", "ogg")):
            body = bucket.get_object(Bucket="veza-stream-tests", Key=info["renditions"][rendition])["Body"].read()
            samples, rate = decode_pcm(body, fmt)
            assert abs(len(samples) / rate - 2.0) < 0.1 and abs(dominant_frequency(samples, rate) - 660) < 10

        bad = [
            ({}, good[: len(good) // 2], 422, "track_truncated"),
            ({}, bytes(range(256)) * 40, 422, "track_unreadable"),
            ({}, b"", 400, "track_empty"),
            ({}, b"GIF89a" + bytes(2000), 422, "track_unreadable"),
            ({"id": "../etc"}, good, 400, "track_id_not_accepted"),
        ]
        for params, body, status, code in bad:
            async with session.post(url, params=params, data=body, headers=AUTH) as resp:
                assert resp.status == status, (code, await resp.text())
                assert (await resp.json())["error"]["code"] == code
        async with session.post(url, data=good) as resp:
            assert resp.status == 401
        # Oversized: refused from Content-Length before the body is read.
        huge = b"\0" * (100 * 1024 * 1024 + 10)
        async with session.post(url, data=huge, headers=AUTH) as resp:
            assert resp.status == 413 and (await resp.json())["error"]["code"] == "track_too_large"
        async with session.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 200
    assert worker.alive()


async def test_a_channels_uploader_cannot_replace_another_track(bucket: Any, start_worker: Any) -> None:
    """A broadcaster of one channel (or anyone with its source password) named the id of the upload, and so
    could replace any track of the platform's bucket: an API track that every playlist plays by its bare id."""
    bucket.put_object(Bucket="veza-stream-tests", Key="tracks/victim/original", Body=b"the API's track")
    worker = start_worker("scoped", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD)
    url = f"{worker.url}/stream/scoped/tracks"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, params={"id": "victim"}, data=sine(440, 1.0, "mp3"), headers=AUTH) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "track_id_not_accepted"
        async with session.post(url, data=sine(440, 1.0, "mp3"), headers=AUTH) as resp:
            assert resp.status == 201
            stored = await resp.json()
    assert bucket.get_object(Bucket="veza-stream-tests", Key="tracks/victim/original")["Body"].read() == (
        b"the API's track")
    written = [stored["original"], *stored["renditions"].values()]
    assert all(key.startswith("channels/scoped/tracks/") for key in written), written


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


async def test_uploads_are_bounded_in_number_and_never_held_in_memory(bucket: Any, start_worker: Any) -> None:
    """An upload was read whole into memory (100 MiB, then its renditions), with no bound on how many ran at once."""
    worker = start_worker("bounded", SPEC, VEZA_SOURCE_PASSWORD=PASSWORD, VEZA_STREAM_MAX_UPLOADS="1")
    assert worker.process is not None
    url = f"{worker.url}/stream/bounded/tracks"
    good = sine(550, 1.0, "mp3")
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield good[:1000]
        await release.wait()
        yield good[1000:]

    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(url, data=slow_body(), headers=AUTH))

        async def slot_taken() -> bool:
            async with session.get(f"{worker.url}/metrics") as resp:
                return 'veza_stream_uploads_in_progress{channel="bounded"} 1.0' in await resp.text()

        await wait_for(slot_taken, timeout=10, message="the first upload holds the slot")
        async with session.post(url, data=good, headers=AUTH) as resp:
            assert resp.status == 503, "a second upload ran alongside the first"
            assert resp.headers.get("Retry-After") == "10" and (await resp.json())["error"]["code"] == "uploads_busy"
        release.set()
        async with await first as resp:
            assert resp.status == 201, await resp.text()
        async with session.post(url, data=good, headers=AUTH) as resp:
            assert resp.status == 201, await resp.text()

        # 90 MiB go to a temporary file as they arrive: the worker's peak memory hardly moves.
        before = peak_rss(worker.process.pid)
        async with session.post(url, data=b"\0" * (90 << 20), headers=AUTH) as resp:
            assert resp.status == 422, await resp.text()
        grown = peak_rss(worker.process.pid) - before
        assert grown < 40 << 20, f"peak memory grew by {grown >> 20} MiB"
    assert worker.alive()
