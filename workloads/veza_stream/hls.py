"""HLS with packed-audio segments (raw MP3 or ADTS AAC, each led by an ID3 timestamp tag).

Segments are cut at deterministic points: a chunk belongs to segment
``pts // target`` (pts counted in samples since the channel's encoding began), so
every replica cuts the same segments with the same sequence numbers from the same
stream, and a player bounced between replicas sees one consistent playlist.
Opus renditions are not offered over HLS (Opus needs fMP4 segments there).
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True, slots=True)
class Part:
    """An LL-HLS partial segment: `index`-th part of segment `sequence` (packed audio, led by its ID3 timestamp)."""

    sequence: int
    index: int
    duration: float
    data: bytes


class Segmenter:
    """Cuts one rendition's chunks into segments and keeps a sliding window of them.

    With ``part_seconds`` (LL-HLS), each segment is also cut into parts as its chunks
    arrive (``pts // part`` within the segment), listed in the playlist before the
    segment is complete, with blocking playlist reloads and a preload hint.
    """

    def __init__(self, codec: str, target_seconds: float = 2.0, window: int = 6, keep: int = 12,
                 on_segment: Callable[[Segment], None] | None = None, part_seconds: float | None = None) -> None:
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
        self.part_seconds = part_seconds
        self.part = max(1, round(part_seconds * SAMPLE_RATE)) if part_seconds else 0
        self.ll_parts: dict[int, list[Part]] = {}  # sequence -> its parts (current segment and the last few)
        self._part_chunks: list[Chunk] = []
        self._part_index: int | None = None
        self.changed = asyncio.Event()  # set (and replaced) whenever a part or a segment appears

    def feed(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.header:
                continue
            index = chunk.pts // self.target
            if self._index is not None and index < self._index:
                # Timestamps went back (a new encoder without history): start over, marked as a discontinuity.
                self._parts = []
                self._part_chunks = []
                self._part_index = None
                self._discontinuity = True
                self._joined = True
            elif self._index is not None and index > self._index and self._parts:
                self._cut_part()
                self._cut()
            self._index = index
            if self.part:
                part_index = (chunk.pts - index * self.target) // self.part
                if self._part_index is not None and part_index != self._part_index and self._part_chunks:
                    self._cut_part()
                self._part_index = part_index
                self._part_chunks.append(chunk)
            self._parts.append(chunk)
        if self.part:
            self._notify()

    @property
    def started(self) -> bool:
        return self._index is not None

    def current_sequence(self) -> int:
        """The sequence number the segment being cut will get."""
        assert self._index is not None
        return max(self._index, self.segments[-1].sequence + 1) if self.segments else self._index

    def _cut_part(self) -> None:
        if not self.part or not self._part_chunks or self._index is None:
            self._part_chunks = []
            return
        chunks, self._part_chunks = self._part_chunks, []
        if self._joined:
            return  # parts of a segment that is never listed are not listed either
        sequence = self.current_sequence()
        parts = self.ll_parts.setdefault(sequence, [])
        parts.append(Part(sequence, len(parts), sum(c.duration for c in chunks) / SAMPLE_RATE,
                          id3_timestamp(chunks[0].pts) + b"".join(c.data for c in chunks)))
        for old in [s for s in self.ll_parts if s < sequence - 3]:
            del self.ll_parts[old]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

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
        self._notify()

    def get_part(self, sequence: int, index: int) -> Part | None:
        parts = self.ll_parts.get(sequence, [])
        return parts[index] if 0 <= index < len(parts) else None

    def has(self, sequence: int, part: int | None) -> bool:
        """Whether the playlist already lists segment `sequence` (complete), or its part `part`."""
        if self.segments and self.segments[-1].sequence >= sequence:
            return True
        return part is not None and self.get_part(sequence, part) is not None

    def segment(self, sequence: int) -> Segment | None:
        return next((s for s in self.segments if s.sequence == sequence), None)

    def playlist(self) -> str:
        listed = list(self.segments)[-self.window:]
        longest = max([s.duration for s in listed], default=self.target_seconds)
        ext = EXTENSIONS[self.codec]
        lines = ["#EXTM3U", f"#EXT-X-VERSION:{9 if self.part else 3}",
                 f"#EXT-X-TARGETDURATION:{max(math.ceil(self.target_seconds), round(longest))}"]
        if self.part:
            lines += [f"#EXT-X-PART-INF:PART-TARGET={self.part_seconds:.3f}",
                      f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * (self.part_seconds or 0):.3f}"]
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{listed[0].sequence if listed else 0}")
        for segment in listed:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += self._part_lines(segment.sequence, listed[-1].sequence)
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(f"{segment.sequence}.{ext}")
        if self.part and listed and self._index is not None and not self._joined:
            current = self.current_sequence()
            lines += self._part_lines(current, current)
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{current}.{len(self.ll_parts.get(current, []))}.{ext}"')
        return "\n".join(lines) + "\n"

    def _part_lines(self, sequence: int, newest: int) -> list[str]:
        if not self.part or sequence < newest - 2:  # parts only for the last segments, as LL-HLS asks
            return []
        ext = EXTENSIONS[self.codec]
        return [f'#EXT-X-PART:DURATION={p.duration:.3f},URI="{p.sequence}.{p.index}.{ext}",INDEPENDENT=YES'
                for p in self.ll_parts.get(sequence, [])]


def master_playlist(renditions: list[tuple[str, str, int]]) -> str:
    """renditions: (name, codec, bitrate kbps) of the HLS-capable renditions."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
    for name, codec, kbps in renditions:
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={kbps * 1000 * 11 // 10},CODECS="{HLS_CODECS[codec]}"')
        lines.append(f"{name}/index.m3u8")
    return "\n".join(lines) + "\n"
