"""Decode once, resample once, encode every rendition.

Sources hand over PyAV frames in whatever format they decoded; :func:`canonical`
turns them into the channel's one internal format (48 kHz stereo planar float) and
the :class:`Transcoder` feeds that to one encoder per rendition. Every encoder keeps
its own sample counter, never reset, so timestamps stay continuous across tracks,
source switches and (when a new leader starts from the last timestamp it saw) leaders.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import av.audio.resampler
from av.audio.codeccontext import AudioCodecContext

from . import lame, ogg, opus
from .spec import Rendition

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
LAYOUT = "stereo"
CANONICAL_FORMAT = "fltp"
TIME_BASE = Fraction(1, SAMPLE_RATE)

CONTENT_TYPES = {"mp3": "audio/mpeg", "aac": "audio/aac", "opus": "audio/ogg"}


@dataclass(frozen=True, slots=True)
class Chunk:
    """Encoded bytes of one rendition: whole MP3 frames, ADTS frames or Ogg pages."""

    data: bytes
    pts: int  # first sample, counted at SAMPLE_RATE since the channel's encoding started
    duration: int  # samples
    header: bool = False  # codec setup (Ogg Opus header pages) that every new listener needs first


def resampler() -> av.AudioResampler:
    """A converter to the canonical format; one per decoded stream, since inputs differ."""
    return av.AudioResampler(format=CANONICAL_FORMAT, layout=LAYOUT, rate=SAMPLE_RATE)


def _detach(frame: av.AudioFrame) -> None:
    """Strip a frame of its source's timing before a fifo or a converter sees it."""
    frame.pts = None  # a fifo checks continuity of pts; ours are counted by each encoder instead
    # ... and the time base: a decoder whose output needed no resampling hands over its stream's time base
    # (1/14112000 for MP3), and a fifo created by a frame of another source would refuse it.
    frame.time_base = TIME_BASE


class _Encoder:
    """Common part: cut canonical frames into the codec's frame size and count samples."""

    frame_size = 1152
    content_type = "application/octet-stream"

    def __init__(self, rendition: Rendition, start_pts: int) -> None:
        self.rendition = rendition
        self.fifo = av.AudioFifo()
        self.pts = start_pts

    def header(self) -> bytes:
        return b""

    def encode(self, frame: av.AudioFrame) -> list[Chunk]:
        _detach(frame)
        self.fifo.write(frame)
        chunks: list[Chunk] = []
        while self.fifo.samples >= self.frame_size:
            block = self.fifo.read(self.frame_size)
            assert block is not None
            chunks.extend(self._encode_block(block))
        return chunks

    def _encode_block(self, block: av.AudioFrame) -> list[Chunk]:
        raise NotImplementedError


class LameMp3(_Encoder):
    """MP3 through the system libmp3lame (see :mod:`veza_stream.lame` for why)."""

    content_type = "audio/mpeg"

    def __init__(self, rendition: Rendition, start_pts: int) -> None:
        super().__init__(rendition, start_pts)
        self.lame = lame.LameEncoder(SAMPLE_RATE, 2, rendition.bitrate_kbps)
        self.frames = lame.FrameSplitter()

    def encode(self, frame: av.AudioFrame) -> list[Chunk]:
        # LAME takes any number of samples and keeps the remainder itself: whole frames go in, no fifo.
        return self._encode_block(frame)

    def _encode_block(self, block: av.AudioFrame) -> list[Chunk]:
        data = self.lame.encode(block.planes[0].buffer_ptr, block.planes[1].buffer_ptr, block.samples)
        chunks = []
        for frame, samples in self.frames.feed(data):
            chunks.append(Chunk(frame, self.pts, samples))
            self.pts += samples
        return chunks


class _PyAVCodec(_Encoder):
    codec = ""

    def __init__(self, rendition: Rendition, start_pts: int) -> None:
        super().__init__(rendition, start_pts)
        ctx = av.CodecContext.create(self.codec, "w")
        assert isinstance(ctx, AudioCodecContext)
        self.ctx: AudioCodecContext = ctx
        self.ctx.sample_rate = SAMPLE_RATE
        self.ctx.layout = LAYOUT
        self.ctx.format = self.sample_format()
        self.ctx.bit_rate = rendition.bitrate_kbps * 1000
        self.ctx.time_base = TIME_BASE
        self.ctx.open()
        self.frame_size = self.ctx.frame_size or 960
        self.convert = None if self.ctx.format.name == CANONICAL_FORMAT else \
            av.AudioResampler(format=self.ctx.format.name, layout=LAYOUT, rate=SAMPLE_RATE)

    def sample_format(self) -> str:
        return CANONICAL_FORMAT

    def _encode_block(self, block: av.AudioFrame) -> list[Chunk]:
        frames = self.convert.resample(block) if self.convert else [block]
        chunks = []
        for frame in frames:
            frame.pts = self.pts
            frame.time_base = self.ctx.time_base
            self.pts += frame.samples
            for packet in self.ctx.encode(frame):
                chunks.extend(self._package(packet))
        return chunks

    def _package(self, packet: av.Packet) -> list[Chunk]:
        return [Chunk(bytes(packet), int(packet.pts or 0), int(packet.duration or self.frame_size))]


class PyAVMp3(_PyAVCodec):
    """PyAV's bundled libmp3lame: correct but slower; used when the system library is missing."""

    codec = "libmp3lame"
    content_type = "audio/mpeg"


# ADTS sampling-frequency index of 48 kHz, AAC-LC profile field, channel configuration of stereo.
_ADTS_48K, _ADTS_LC, _ADTS_STEREO = 3, 1, 2


def adts_header(payload_length: int) -> bytes:
    size = payload_length + 7
    return bytes((0xFF, 0xF1, (_ADTS_LC << 6) | (_ADTS_48K << 2) | (_ADTS_STEREO >> 2),
                  ((_ADTS_STEREO & 3) << 6) | (size >> 11), (size >> 3) & 0xFF, ((size & 7) << 5) | 0x1F, 0xFC))


class AacAdts(_PyAVCodec):
    """AAC-LC, each raw frame wrapped in a 7-byte ADTS header (what `audio/aac` players expect)."""

    codec = "aac"
    content_type = "audio/aac"

    def _package(self, packet: av.Packet) -> list[Chunk]:
        data = bytes(packet)
        return [Chunk(adts_header(len(data)) + data, int(packet.pts or 0), int(packet.duration or 1024))]


class _Capture(io.RawIOBase):
    """A write-only file the Ogg muxer writes pages into; drained after every mux call."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class OpusOgg(_Encoder):
    """Opus in Ogg through libavformat's muxer, with short pages for low latency.

    The header pages (OpusHead, OpusTags) are kept and sent to each new listener
    before the pages of the live stream, as Icecast does. Packets come from the system
    libopus when present (see :mod:`veza_stream.opus` for why), else from PyAV's encoder.
    """

    content_type = "audio/ogg"
    frame_size = 960

    def __init__(self, rendition: Rendition, start_pts: int, *, prefer_system_codecs: bool = True) -> None:
        super().__init__(rendition, start_pts)
        self.sink = _Capture()
        # page_duration in microseconds: a page every 20 ms instead of every second.
        self.container = av.open(self.sink, "w", format="ogg", options={"page_duration": "20000"})
        self.stream = self.container.add_stream("libopus", rate=SAMPLE_RATE, layout=LAYOUT)
        self.stream.bit_rate = rendition.bitrate_kbps * 1000
        self.stream.codec_context.format = "flt"
        self.container.start_encoding()
        self._header = self.sink.drain()
        self.native: opus.OpusEncoder | None = None
        if prefer_system_codecs and opus.load() is not None:
            native = opus.OpusEncoder(SAMPLE_RATE, 2, rendition.bitrate_kbps)
            # Its packets go under the OpusHead written for PyAV's encoder: the pre-skip must agree.
            if native.lookahead == _pre_skip(self._header):
                self.native = native
        self.convert = av.AudioResampler(format="flt", layout=LAYOUT, rate=SAMPLE_RATE)
        self.base = start_pts  # Ogg granule positions start at 0 for every logical stream
        self.page_start = start_pts  # first sample not yet covered by a chunk

    def header(self) -> bytes:
        return self._header

    def encode(self, frame: av.AudioFrame) -> list[Chunk]:
        # libopus takes interleaved samples: convert each incoming frame once, before it is cut into
        # 20 ms blocks, rather than each block (a fifth of the conversion calls).
        _detach(frame)
        chunks: list[Chunk] = []
        for interleaved in self.convert.resample(frame):
            chunks.extend(super().encode(interleaved))
        return chunks

    def _encode_block(self, block: av.AudioFrame) -> list[Chunk]:
        block.pts = self.pts - self.base
        self.pts += block.samples
        if self.native is None:
            for packet in self.stream.encode(block):
                self.container.mux(packet)
        else:
            packet = av.Packet(self.native.encode(block.planes[0].buffer_ptr, block.samples))
            packet.stream = self.stream
            # Timed as libavcodec times its own: shifted by the pre-skip, so granule positions agree.
            packet.pts = packet.dts = block.pts - self.native.lookahead
            packet.duration = block.samples
            packet.time_base = TIME_BASE
            self.container.mux(packet)
        data = self.sink.drain()
        if not data:  # the encoder's lookahead: these samples come out with the next page
            return []
        start, self.page_start = self.page_start, self.pts
        return [Chunk(data, start, self.pts - start)]


def _pre_skip(header: bytes) -> int:
    """The pre-skip field of the OpusHead packet in these header pages (RFC 7845 5.1)."""
    head = next(iter(ogg.PacketReader().feed(header)), b"")
    return int.from_bytes(head[10:12], "little") if head.startswith(b"OpusHead") else -1


def make_encoder(rendition: Rendition, start_pts: int = 0, *, prefer_system_codecs: bool = True) -> _Encoder:
    if rendition.codec == "mp3":
        if prefer_system_codecs and lame.load() is not None:
            return LameMp3(rendition, start_pts)
        log.warning("system libmp3lame not found; using PyAV's slower bundled encoder")
        return PyAVMp3(rendition, start_pts)
    if rendition.codec == "aac":
        return AacAdts(rendition, start_pts)
    return OpusOgg(rendition, start_pts, prefer_system_codecs=prefer_system_codecs)


class Transcoder:
    """One encoder per rendition, fed the same canonical frames."""

    def __init__(self, renditions: list[Rendition], start_pts: int = 0, *, prefer_system_codecs: bool = True) -> None:
        self.encoders = {r.name: make_encoder(r, start_pts, prefer_system_codecs=prefer_system_codecs)
                         for r in renditions}

    def headers(self) -> dict[str, bytes]:
        return {name: enc.header() for name, enc in self.encoders.items()}

    def encode(self, frame: av.AudioFrame) -> dict[str, list[Chunk]]:
        """Chunks per rendition for one canonical frame (which must not be reused by the caller)."""
        out: dict[str, list[Chunk]] = {}
        for name, encoder in self.encoders.items():
            # Each fifo takes its own reference; pts is cleared there, so share the frame.
            out[name] = encoder.encode(frame)
        return out
