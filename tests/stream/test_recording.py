"""Recording: every rendition and the HLS segments archived to S3, decoding to the tone that was played."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.stream.audio import decode_pcm, dominant_frequency, sine

BUCKET = "veza-stream-tests"
SPEC = {"source": {"type": "playlist", "playlist": {"tracks": ["tests/record550.mp3"]}},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128},
                       {"name": "opus", "codec": "opus", "bitrateKbps": 64}],
        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}},
        "recording": {"enabled": True}}


@pytest.fixture(scope="module")
def track(bucket: Any) -> None:
    bucket.put_object(Bucket=BUCKET, Key="tests/record550.mp3", Body=sine(550, 3.0, "mp3"))


def keys(bucket: Any, prefix: str) -> list[str]:
    pages = bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


async def test_recording_archives_renditions_and_hls(track: None, bucket: Any, start_worker: Any) -> None:
    worker = start_worker("taped", SPEC, VEZA_STREAM_RECORDING_SECONDS="2")
    await asyncio.sleep(7.5)
    worker.stop()  # the files being recorded are uploaded at shutdown, cut short
    for rendition, ext, fmt in (("mp3", "mp3", "mp3"), ("opus", "ogg", "ogg")):
        files = keys(bucket, f"recordings/taped/{rendition}/")
        assert len(files) >= 3, files
        assert all(k.endswith(f".{ext}") and k.count("/") == 5 for k in files), files  # .../{date}/{hour}/{file}
        starts = sorted(int(k.rsplit("-", 1)[1].split(".")[0]) for k in files)
        total = 0.0
        for key in files:
            body = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            samples, rate = decode_pcm(body, fmt)  # each file decodes on its own (Ogg ones carry the headers)
            seconds = len(samples) / rate
            assert seconds <= 2.1, (key, seconds)
            total += seconds
            if seconds > 0.5:
                assert abs(dominant_frequency(samples, rate) - 550) < 10, key
        # One file per 2 s slice of the channel's timeline (pts // 96000), none missing, none twice.
        slices = [s // 96000 for s in starts]
        assert slices == list(range(slices[0], slices[0] + len(slices))), starts
        assert total >= 5.5, (rendition, total)
    segments = keys(bucket, "recordings/taped/hls/mp3/")
    assert len(segments) >= 4, segments
    assert not keys(bucket, "recordings/taped/hls/opus/")  # Opus is not offered over HLS
    for key in segments:
        body = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body.startswith(b"ID3")
        samples, rate = decode_pcm(body, "mp3")
        assert abs(len(samples) / rate - 1.0) < 0.06 and abs(dominant_frequency(samples, rate) - 550) < 10, key
