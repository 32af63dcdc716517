"""Demo tracks for the example channel, generated at first start (no audio files in git).

A playlist entry whose S3 key starts with `demo/` and does not exist yet is made
here: a soft sine tone of a few seconds, MP3 with an ID3 title, written straight
to the bucket at that key (the stream worker plays S3 keys as they are; see
`veza_stream.sources.track_key`). The frequency comes from the key's trailing
number (`demo/sine-440` -> 440 Hz).
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

DEMO_PREFIX = "demo/"
SECONDS = 6.0
RATE = 44100


def demo_keys(channel_specs: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for spec in channel_specs:
        source = spec.get("source") or {}
        for playlist in (source.get("playlist"), (source.get("fallback") or {}).get("playlist")):
            for track in (playlist or {}).get("tracks") or []:
                if isinstance(track, str) and track.startswith(DEMO_PREFIX) and track not in keys:
                    keys.append(track)
    return keys


def frequency(key: str) -> float:
    match = re.search(r"(\d+(?:\.\d+)?)$", key)
    hz = float(match.group(1)) if match else 440.0
    return min(max(hz, 40.0), 8000.0)


def tone_mp3(hz: float, title: str, seconds: float = SECONDS) -> bytes:
    import array

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        out.metadata["title"] = title
        out.metadata["artist"] = "Veza demo"
        stream = out.add_stream("libmp3lame", rate=RATE, layout="mono")
        stream.bit_rate = 64000
        total = int(seconds * RATE)
        # One second holds a whole number of cycles for integral frequencies: compute it once, repeat it,
        # and fade the ends in and out (50 ms) so the loop has no clicks.
        step = 2 * math.pi * hz / RATE
        second = array.array("h", (int(6500 * math.sin(step * i)) for i in range(RATE)))
        samples = (second * (total // RATE + 1))[:total]
        fade = RATE // 20
        for i in range(fade):
            samples[i] = samples[i] * i // fade
            samples[total - 1 - i] = samples[total - 1 - i] * i // fade
        chunk = 1152
        for start in range(0, total, chunk):
            piece = samples[start:start + chunk]
            frame = av.AudioFrame(format="s16p", layout="mono", samples=len(piece))
            frame.planes[0].update(piece.tobytes())
            frame.sample_rate = RATE
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def prepare_demo_tracks(channel_specs: list[dict[str, Any]], *, endpoint: str, region: str, access_key: str,
                        secret_key: str) -> tuple[Any, dict[str, bytes]]:
    """An S3 client for the local endpoint and the demo tracks as MP3 bytes by key, made before S3 is up."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key)
    tracks: dict[str, bytes] = {}
    for key in demo_keys(channel_specs):
        hz = frequency(key)
        tracks[key] = tone_mp3(hz, f"Sine {hz:g} Hz")
    return client, tracks


def upload_demo_tracks(client: Any, tracks: dict[str, bytes], bucket: str) -> list[str]:
    """Create the bucket and upload the tracks that are missing; the keys uploaded."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    made: list[str] = []
    for key, data in tracks.items():
        try:
            client.head_object(Bucket=bucket, Key=key)
            continue
        except ClientError:
            pass
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="audio/mpeg")
        made.append(key)
    return made
