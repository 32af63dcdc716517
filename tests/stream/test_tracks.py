"""Track ingestion: probe uploads, refuse bad ones with 4xx, store the original and renditions in S3."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from tests.support.audio import decode_pcm, dominant_frequency, sine

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
        async with session.post(url, params={"id": "t660"}, data=good, headers=AUTH) as resp:
            assert resp.status == 201, await resp.text()
            info = await resp.json()
        assert info["codec"].startswith("mp3") and abs(info["duration"] - 2.0) < 0.1 and info["title"] == "Six Sixty"
        original = bucket.get_object(Bucket="veza-stream-tests", Key="tracks/t660/original")["Body"].read()
        assert original == good
        for rendition, fmt in (("mp3", "mp3"), ("opus", "ogg")):
            body = bucket.get_object(Bucket="veza-stream-tests", Key=info["renditions"][rendition])["Body"].read()
            samples, rate = decode_pcm(body, fmt)
            assert abs(len(samples) / rate - 2.0) < 0.1 and abs(dominant_frequency(samples, rate) - 660) < 10

        bad = [
            ({"id": "t1"}, good[: len(good) // 2], 422, "track_truncated"),
            ({"id": "t2"}, bytes(range(256)) * 40, 422, "track_unreadable"),
            ({"id": "t3"}, b"", 400, "track_empty"),
            ({"id": "../etc"}, good, 400, "bad_track_id"),
            ({"id": "t4"}, b"GIF89a" + bytes(2000), 422, "track_unreadable"),
        ]
        for params, body, status, code in bad:
            async with session.post(url, params=params, data=body, headers=AUTH) as resp:
                assert resp.status == status, (code, await resp.text())
                assert (await resp.json())["error"]["code"] == code
        async with session.post(url, params={"id": "t5"}, data=good) as resp:
            assert resp.status == 401
        # A stored track is never replaced (the bucket is the platform's: another channel's
        # broadcaster could overwrite any track by its id), and without an id the worker names it.
        async with session.post(url, params={"id": "t660"}, data=sine(440, 1.0, "mp3"), headers=AUTH) as resp:
            assert resp.status == 409 and (await resp.json())["error"]["code"] == "track_exists"
        assert bucket.get_object(Bucket="veza-stream-tests", Key="tracks/t660/original")["Body"].read() == good
        async with session.post(url, data=good, headers=AUTH) as resp:
            assert resp.status == 201
            named = (await resp.json())["id"]
        assert len(named) == 32 and named != "t660"
        # Oversized: refused from Content-Length before the body is read.
        huge = b"\0" * (100 * 1024 * 1024 + 10)
        async with session.post(url, params={"id": "t6"}, data=huge, headers=AUTH) as resp:
            assert resp.status == 413 and (await resp.json())["error"]["code"] == "track_too_large"
        async with session.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 200
    assert worker.alive()
