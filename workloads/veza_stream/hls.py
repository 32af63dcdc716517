"""HLS: packed-audio segments for MP3 and AAC, fragmented MP4 for Opus.

Segments are cut at deterministic points: a chunk belongs to segment
``pts // target`` (pts counted in samples since the channel's encoding began), so
every replica cuts the same segments with the same sequence numbers from the same
stream, and a player bounced between replicas sees one consistent playlist.
How a segment's chunks become bytes is the rendition's :class:`Packaging`: raw MP3 or
ADTS frames led by an ID3 timestamp tag, or (Opus, which HLS carries only in fMP4)
the packets of its Ogg pages as one fMP4 fragment behind an init segment.

Each listed segment carries ``#EXT-X-PROGRAM-DATE-TIME``: the stream time of its first sample (the
Unix time at which the encoder produced it, docs/streaming.md "Stream position"), so a player knows
the stream time of what it plays: that of its segment plus how far into it it is.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import fmp4, ogg, opus
from .transcoder import SAMPLE_RATE, Chunk

HLS_CODECS = {"mp3": "mp4a.40.34", "aac": "mp4a.40.2", "opus": "opus"}
EXTENSIONS = {"mp3": "mp3", "aac": "aac", "opus": "m4s"}
SEGMENT_TYPES = {"mp3": "audio/mpeg", "aac": "audio/aac", "opus": "audio/mp4"}
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
INIT_NAME = "init.mp4"
INIT_TYPE = "audio/mp4"


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
    init: bytes | None = None  # the fMP4 init segment it needs (Opus), shared, not copied
    program_time: float | None = None  # stream time of its first sample (Unix seconds), when known


@dataclass(frozen=True, slots=True)
class Part:
    """An LL-HLS partial segment: `index`-th part of segment `sequence`, packaged as its segment is."""

    sequence: int
    index: int
    duration: float
    data: bytes


@dataclass(frozen=True, slots=True)
class Piece:
    """What a segmenter keeps of a chunk: its place on the timeline and its codec data."""

    pts: int
    duration: int
    frames: tuple[bytes, ...]  # packed audio: the chunk's bytes; Opus: the packets its pages completed


class PackedAudio:
    """MP3 or ADTS AAC frames as they are, led by the ID3 tag that carries the segment's timestamp."""

    init: bytes | None = None
    needs_init = False

    def header(self, chunk: Chunk) -> None:
        pass

    def take(self, chunk: Chunk) -> Piece:
        return Piece(chunk.pts, chunk.duration, (chunk.data,))

    def package(self, pieces: list[Piece], sequence: int) -> bytes:
        return id3_timestamp(pieces[0].pts) + b"".join(f for p in pieces for f in p.frames)


class OpusFmp4:
    """Opus packets out of the Ogg pages, each segment (or part) one fMP4 fragment."""

    needs_init = True  # nothing is listed before the stream's header has been seen

    def __init__(self) -> None:
        self.init: bytes | None = None
        self.reader = ogg.PacketReader()

    def header(self, chunk: Chunk) -> None:
        # A new Ogg stream (a new encoder): its OpusHead describes the track.
        self.reader = ogg.PacketReader()
        packets = ogg.PacketReader().feed(chunk.data)
        if packets:
            self.init = fmp4.init_segment(packets[0])

    def take(self, chunk: Chunk) -> Piece:
        return Piece(chunk.pts, chunk.duration, tuple(self.reader.feed(chunk.data)))

    def package(self, pieces: list[Piece], sequence: int) -> bytes:
        samples = [(packet, opus.packet_samples(packet)) for p in pieces for packet in p.frames]
        # The Ogg muxer hands a packet over with the next page: packets run behind their chunks' timestamps. Timing
        # them back from the end of the last chunk keeps fragments contiguous, the same on every replica.
        end = pieces[-1].pts + pieces[-1].duration
        return fmp4.fragment(sequence + 1, end - sum(d for _, d in samples), samples)


Packaging = PackedAudio | OpusFmp4


class Segmenter:
    """Cuts one rendition's chunks into segments and keeps a sliding window of them.

    With ``part_seconds`` (LL-HLS), each segment is also cut into parts as its chunks
    arrive (``pts // part`` within the segment), listed in the playlist before the
    segment is complete, with blocking playlist reloads and a preload hint.
    """

    def __init__(self, codec: str, target_seconds: float = 2.0, window: int = 6, keep: int = 12,
                 on_segment: Callable[[Segment], None] | None = None, part_seconds: float | None = None,
                 stream_time: Callable[[int], float | None] | None = None) -> None:
        self.codec = codec
        self.extension = EXTENSIONS[codec]
        self.packaging: Packaging = OpusFmp4() if codec == "opus" else PackedAudio()
        self.target = max(1, round(target_seconds * SAMPLE_RATE))
        self.target_seconds = target_seconds
        self.window = window
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.on_segment = on_segment
        self.stream_time = stream_time  # pts -> stream time, fixed for a segment when it is cut
        self._index: int | None = None
        self._pieces: list[Piece] = []  # of the segment being cut
        self._discontinuity = False
        self._joined = True  # the next segment may have started before we saw it
        self.part_seconds = part_seconds
        self.part = max(1, round(part_seconds * SAMPLE_RATE)) if part_seconds else 0
        self.ll_parts: dict[int, list[Part]] = {}  # sequence -> its parts (current segment and the last few)
        self._part_pieces: list[Piece] = []
        self._part_index: int | None = None
        self.changed = asyncio.Event()  # set (and replaced) whenever a part or a segment appears

    def feed(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.header:
                self.packaging.header(chunk)
                continue
            piece = self.packaging.take(chunk)
            index = piece.pts // self.target
            if self._index is not None and index < self._index:
                # Timestamps went back (a new encoder without history): start over, marked as a discontinuity.
                self._pieces = []
                self._part_pieces = []
                self._part_index = None
                self._discontinuity = True
                self._joined = True
            elif self._index is not None and index > self._index and self._pieces:
                self._cut_part()
                self._cut()
            self._index = index
            if self.part:
                part_index = (piece.pts - index * self.target) // self.part
                if self._part_index is not None and part_index != self._part_index and self._part_pieces:
                    self._cut_part()
                self._part_index = part_index
                self._part_pieces.append(piece)
            self._pieces.append(piece)
        if self.part:
            self._notify()

    @property
    def ready(self) -> bool:
        """Whether segments can be listed: packed audio always, fMP4 once the init segment is known."""
        return not self.packaging.needs_init or self.packaging.init is not None

    @property
    def started(self) -> bool:
        return self._index is not None

    def current_sequence(self) -> int:
        """The sequence number the segment being cut will get."""
        assert self._index is not None
        return max(self._index, self.segments[-1].sequence + 1) if self.segments else self._index

    def _cut_part(self) -> None:
        if not self.part or not self._part_pieces or self._index is None:
            self._part_pieces = []
            return
        pieces, self._part_pieces = self._part_pieces, []
        if self._joined or not self.ready:
            return  # parts of a segment that is never listed are not listed either
        sequence = self.current_sequence()
        parts = self.ll_parts.setdefault(sequence, [])
        parts.append(Part(sequence, len(parts), sum(p.duration for p in pieces) / SAMPLE_RATE,
                          self.packaging.package(pieces, sequence)))
        for old in [s for s in self.ll_parts if s < sequence - 3]:
            del self.ll_parts[old]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _cut(self) -> None:
        assert self._index is not None
        pieces, self._pieces = self._pieces, []
        if not self.ready:
            return
        samples = sum(p.duration for p in pieces)
        sequence = self._index
        if self.segments and sequence <= self.segments[-1].sequence:
            sequence = self.segments[-1].sequence + 1
        segment = Segment(sequence, pieces[0].pts, samples / SAMPLE_RATE, self.packaging.package(pieces, sequence),
                          self._discontinuity, self.packaging.init,
                          self.stream_time(pieces[0].pts) if self.stream_time is not None else None)
        if self._joined:
            self._joined = False
            if pieces[0].pts != self._index * self.target:
                # It may have begun before this segmenter did. A replica lists a sequence only as every other
                # replica does, so this one, perhaps a few frames short, is never listed.
                return
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
        ext = self.extension
        # EXT-X-MAP (fMP4) needs version 6; LL-HLS's tags need 9.
        version = 9 if self.part else 6 if self.packaging.needs_init else 3
        lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}",
                 f"#EXT-X-TARGETDURATION:{max(math.ceil(self.target_seconds), round(longest))}"]
        if self.part:
            lines += [f"#EXT-X-PART-INF:PART-TARGET={self.part_seconds:.3f}",
                      f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * (self.part_seconds or 0):.3f}"]
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{listed[0].sequence if listed else 0}")
        if self.packaging.needs_init:
            lines.append(f'#EXT-X-MAP:URI="{INIT_NAME}"')
        for segment in listed:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.program_time is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(segment.program_time)}")
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
        ext = self.extension
        return [f'#EXT-X-PART:DURATION={p.duration:.3f},URI="{p.sequence}.{p.index}.{ext}",INDEPENDENT=YES'
                for p in self.ll_parts.get(sequence, [])]


def program_date_time(unix: float) -> str:
    """An `EXT-X-PROGRAM-DATE-TIME` value: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def master_playlist(renditions: list[tuple[str, str, int]]) -> str:
    """renditions: (name, codec, bitrate kbps) of the HLS-capable renditions."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
    for name, codec, kbps in renditions:
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={kbps * 1000 * 11 // 10},CODECS="{HLS_CODECS[codec]}"')
        lines.append(f"{name}/index.m3u8")
    return "\n".join(lines) + "\n"
