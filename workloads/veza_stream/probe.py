"""Track ingestion probe: is an upload a complete, supported, reasonably sized audio file?

Everything is decoded once (cheap next to transcoding, and the only way to find a
corrupt middle). Truncation, which decoders forgive silently, is caught two ways:
an MP3 whose last frame is shorter than its header says, and a file whose declared
duration (Xing/Info header, container index) exceeds what actually decodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import av

from veza_core.media import UNTRUSTED_AUDIO
from veza_core.web import HttpError

from .lame import frame_length

MAX_TRACK_BYTES = 100 * 1024 * 1024
MAX_TRACK_SECONDS = 3 * 3600.0
SUPPORTED_CODECS = frozenset({"mp3", "mp3float", "aac", "opus", "libopus", "vorbis", "libvorbis", "flac", "alac",
                              "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8"})
SUPPORTED_CONTAINERS = frozenset({"mp3", "ogg", "aac", "flac", "wav", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})


@dataclass(frozen=True)
class TrackInfo:
    container: str
    codec: str
    duration: float
    sample_rate: int
    channels: int
    bitrate: int
    title: str | None


class ProbeError(HttpError):
    """Why an upload is refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)


def probe(data: bytes | BinaryIO, *, max_bytes: int = MAX_TRACK_BYTES,
          max_seconds: float = MAX_TRACK_SECONDS) -> TrackInfo:
    """What an upload (its bytes, or a file of them: read from the start, never by name) holds; ProbeError when it
    is not a complete, supported, reasonably sized audio file."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    if size > max_bytes:
        raise ProbeError(413, "track_too_large", f"tracks are limited to {max_bytes} bytes")
    if not size:
        raise ProbeError(400, "track_empty", "the upload is empty")
    try:
        container = av.open(source, "r", container_options=UNTRUSTED_AUDIO)
    except (av.error.FFmpegError, ValueError) as exc:  # a demuxer outside the allow-list too
        raise ProbeError(422, "track_unreadable", "not an audio file we can read") from exc
    with container:
        if container.format.name not in SUPPORTED_CONTAINERS or not container.streams.audio:
            raise ProbeError(415, "track_unsupported", f"unsupported container {container.format.name!r}")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        if codec not in SUPPORTED_CODECS:
            raise ProbeError(415, "track_unsupported", f"unsupported codec {codec!r}")
        declared = container.duration / 1e6 if container.duration else None
        if declared is not None and declared > max_seconds:
            raise ProbeError(413, "track_too_long", f"tracks are limited to {max_seconds:.0f} s")
        samples = 0
        last_packet: bytes | None = None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    last_packet = bytes(packet)
                for frame in packet.decode():
                    samples += frame.samples
                if samples > max_seconds * (stream.rate or 48000):
                    raise ProbeError(413, "track_too_long", f"tracks are limited to {max_seconds:.0f} s")
        except av.error.FFmpegError as exc:
            raise ProbeError(422, "track_corrupt", f"the audio does not decode: {exc}") from exc
        rate = stream.rate or stream.codec_context.sample_rate or 0
        decoded = samples / rate if rate else 0.0
        if samples == 0:
            raise ProbeError(422, "track_corrupt", "no audio decodes from this file")
        if codec.startswith("mp3") and last_packet is not None:
            expected = frame_length(last_packet[:4])
            if expected is None or len(last_packet) < expected[0]:
                raise ProbeError(422, "track_truncated", "the last MP3 frame is cut short: the upload is truncated")
        if declared is not None and declared - decoded > max(0.5, declared * 0.02):
            raise ProbeError(422, "track_truncated",
                             f"the file declares {declared:.1f} s but only {decoded:.1f} s decode")
        meta = {k.lower(): v for k, v in (container.metadata or {}).items()}
        return TrackInfo(container=container.format.name, codec=codec, duration=round(decoded, 3),
                         sample_rate=rate, channels=stream.codec_context.channels,
                         bitrate=int(container.bit_rate or 0), title=meta.get("title"))
