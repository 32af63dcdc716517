"""HLS with packed-audio segments (raw MP3 or ADTS AAC, each led by an ID3 timestamp tag).

Segments are cut at deterministic points: a chunk belongs to segment
``pts // target`` (pts counted in samples since the channel's encoding began), so
every replica cuts the same segments with the same sequence numbers from the same
stream, and a player bounced between replicas sees one consistent playlist.
Opus renditions are not offered over HLS (Opus needs fMP4 segments there).
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .transcoder import SAMPLE_RATE, Chunk

HLS_CODECS = {"mp3": "mp4a.40.34", "aac": "mp4a.40.2"}
EXTENSIONS = {"mp3": "mp3", "aac": "aac"}
SEGMENT_TYPES = {"mp3": "audio/mpeg", "aac": "audio/aac"}
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


def id3_timestamp(pts: int) -> bytes:
    """ID3v2.4 tag with the PRIV frame HLS packed audio requires (90 kHz, 33 bits)."""
    owner = b"com.apple.streaming.transportStreamTimestamp\0"
    payload = owner + struct.pack(">Q", (pts * 90000 // SAMPLE_RATE) & ((1 << 33) - 1))
    frame = b"PRIV" + _syncsafe(len(payload)) + b"\0\0" + payload
    return b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame


def _syncsafe(n: int) -> bytes:
    return bytes(((n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F))


@dataclass(frozen=True, slots=True)
class Segment:
    sequence: int
    pts: int
    duration: float
    data: bytes
    discontinuity: bool = False


class Segmenter:
    """Cuts one rendition's chunks into segments and keeps a sliding window of them."""

    def __init__(self, codec: str, target_seconds: float = 2.0, window: int = 6, keep: int = 12,
                 on_segment: Callable[[Segment], None] | None = None) -> None:
        self.codec = codec
        self.target = max(1, round(target_seconds * SAMPLE_RATE))
        self.target_seconds = target_seconds
        self.window = window
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.on_segment = on_segment
        self._index: int | None = None
        self._parts: list[Chunk] = []
        self._discontinuity = False
        self._joined = True  # the next segment may have started before we saw it

    def feed(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.header:
                continue
            index = chunk.pts // self.target
            if self._index is not None and index < self._index:
                # Timestamps went back (a new encoder without history): start over, marked as a discontinuity.
                self._parts = []
                self._discontinuity = True
                self._joined = True
            elif self._index is not None and index > self._index and self._parts:
                self._cut()
            self._index = index
            self._parts.append(chunk)

    def _cut(self) -> None:
        assert self._index is not None
        samples = sum(c.duration for c in self._parts)
        sequence = self._index
        if self.segments and sequence <= self.segments[-1].sequence:
            sequence = self.segments[-1].sequence + 1
        segment = Segment(sequence, self._parts[0].pts, samples / SAMPLE_RATE,
                          id3_timestamp(self._parts[0].pts) + b"".join(c.data for c in self._parts),
                          self._discontinuity)
        self._parts = []
        if self._joined:
            self._joined = False
            if segment.duration < 0.9 * self.target_seconds:
                return  # its start happened before this segmenter began: incomplete, never listed
        self._discontinuity = False
        self.segments.append(segment)
        if self.on_segment:
            self.on_segment(segment)

    def segment(self, sequence: int) -> Segment | None:
        return next((s for s in self.segments if s.sequence == sequence), None)

    def playlist(self) -> str:
        listed = list(self.segments)[-self.window:]
        longest = max([s.duration for s in listed], default=self.target_seconds)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3",
                 f"#EXT-X-TARGETDURATION:{max(math.ceil(self.target_seconds), round(longest))}",
                 f"#EXT-X-MEDIA-SEQUENCE:{listed[0].sequence if listed else 0}"]
        for segment in listed:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(f"{segment.sequence}.{EXTENSIONS[self.codec]}")
        return "\n".join(lines) + "\n"


def master_playlist(renditions: list[tuple[str, str, int]]) -> str:
    """renditions: (name, codec, bitrate kbps) of the HLS-capable renditions."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
    for name, codec, kbps in renditions:
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={kbps * 1000 * 11 // 10},CODECS="{HLS_CODECS[codec]}"')
        lines.append(f"{name}/index.m3u8")
    return "\n".join(lines) + "\n"
