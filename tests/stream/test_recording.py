"""Recording and the HLS archive: renditions and segments stored in S3, decoding to the tone that was played."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest

from tests.support.audio import decode_pcm, dominant_frequency, sine
from tests.support.stream import BUCKET
from tests.support.waiting import wait_for

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
    await asyncio.sleep(7.5)  # the point: 7.5 s of the channel recorded
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
    # HLS segments as they were cut; Opus ones as fMP4 fragments behind the stored init segment.
    for rendition, fmt, ext in (("mp3", "mp3", "mp3"), ("opus", "mp4", "m4s")):
        stored = keys(bucket, f"channels/taped/hls/{rendition}/")
        init = b""
        if fmt == "mp4":
            init = bucket.get_object(Bucket=BUCKET, Key=f"channels/taped/hls/{rendition}/init.mp4")["Body"].read()
            stored.remove(f"channels/taped/hls/{rendition}/init.mp4")
        assert len(stored) >= 4 and all(k.endswith(f".{ext}") for k in stored), stored
        for key in stored:
            body = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert body.startswith(b"ID3") if fmt == "mp3" else body[4:8] == b"moof"
            samples, rate = decode_pcm(init + body, fmt)
            assert abs(len(samples) / rate - 1.0) < 0.06 and abs(dominant_frequency(samples, rate) - 550) < 10, key


async def test_hls_segments_are_archived_unless_turned_off(track: None, bucket: Any, start_worker: Any) -> None:
    """Archiving HLS segments does not need recording; `delivery.hls.archive: false` turns it off."""
    plain = {**SPEC, "recording": {"enabled": False}}
    archived = start_worker("archived", plain)
    unarchived = start_worker("unarchived", {
        **plain, "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1, "archive": False}}})

    def served(worker: Any, channel: str) -> int:
        """Segments the channel's mp3 playlist lists."""
        with urllib.request.urlopen(f"{worker.url}/stream/{channel}/hls/mp3/index.m3u8", timeout=3) as r:  # noqa: S310
            return r.read().count(b".mp3")

    await wait_for(lambda: len(keys(bucket, "channels/archived/hls/mp3/")) >= 2
                   and "channels/archived/hls/opus/init.mp4" in keys(bucket, "channels/archived/hls/opus/"),
                   timeout=15, interval=0.2, message="segments archived")
    # The other channel cuts segments all the same (two, as many as the first one archived)...
    await wait_for(lambda: served(unarchived, "unarchived") >= 2, timeout=15, interval=0.2,
                   message="segments served without the archive")
    assert not keys(bucket, "recordings/archived/")
    # ... and archives none of them.
    assert not keys(bucket, "channels/unarchived/") and not keys(bucket, "recordings/unarchived/")
    assert archived.alive() and unarchived.alive()
