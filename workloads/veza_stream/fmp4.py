"""Fragmented MP4 (ISO/IEC 14496-12) for Opus over HLS: an init segment and one fragment per segment or part.

HLS carries Opus only in fMP4 ("Opus in ISOBMFF", opus-codec.org). Segments are cut from the
Ogg stream every replica already receives, so they are built here from its packets rather
than by a second muxer per replica: every replica then writes the same bytes for the same
segment, as it does for packed audio. One audio track, timescale 48 kHz; all samples are sync
samples, so the fragment needs no sample flags.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

TIMESCALE = 48000
TRACK_ID = 1
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def opus_specific_box(opus_head: bytes) -> bytes:
    """`dOps` from an Ogg OpusHead packet: the same fields, big-endian, without the magic."""
    if len(opus_head) < 19 or not opus_head.startswith(b"OpusHead"):
        raise ValueError("not an OpusHead packet")
    channels, pre_skip, rate, gain, family = struct.unpack_from("<BHIhB", opus_head, 9)
    body = struct.pack(">BBHIhB", 0, channels, pre_skip, rate, gain, family)
    if family != 0:
        body += opus_head[19:21 + channels]  # stream count, coupled count, channel mapping
    return _box(b"dOps", body)


def init_segment(opus_head: bytes) -> bytes:
    """ftyp + moov for one Opus track described by `opus_head`."""
    channels = opus_head[9]
    sample_entry = _box(b"Opus", bytes(6), struct.pack(">H", 1), bytes(8),
                        struct.pack(">HHHHI", channels, 16, 0, 0, TIMESCALE << 16), opus_specific_box(opus_head))
    empty = struct.pack(">I", 0)
    stbl = _box(b"stbl", _full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
                _full_box(b"stts", 0, 0, empty), _full_box(b"stsc", 0, 0, empty),
                _full_box(b"stsz", 0, 0, empty, empty), _full_box(b"stco", 0, 0, empty))
    minf = _box(b"minf", _full_box(b"smhd", 0, 0, bytes(4)),
                _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))), stbl)
    mdia = _box(b"mdia", _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0)),  # "und"
                _full_box(b"hdlr", 0, 0, bytes(4), b"soun", bytes(12), b"Veza audio\0"), minf)
    tkhd = _full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, TRACK_ID, 0, 0), bytes(8),
                     struct.pack(">hhhH", 0, 1, 0x0100, 0), _MATRIX, struct.pack(">II", 0, 0))
    mvhd = _full_box(b"mvhd", 0, 0, struct.pack(">IIIIIH", 0, 0, 1000, 0, 0x10000, 0x0100), bytes(10), _MATRIX,
                     bytes(24), struct.pack(">I", TRACK_ID + 1))
    mvex = _box(b"mvex", _full_box(b"trex", 0, 0, struct.pack(">IIIII", TRACK_ID, 1, 0, 0, 0)))
    ftyp = _box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"mp41")
    return ftyp + _box(b"moov", mvhd, _box(b"trak", tkhd, mdia), mvex)


def fragment(sequence_number: int, base_time: int, samples: Sequence[tuple[bytes, int]]) -> bytes:
    """moof + mdat holding `samples` (packet, duration in 1/48000 s), the first decoded at `base_time`."""
    trun_flags = 0x000001 | 0x000100 | 0x000200  # data offset, per-sample duration and size
    entries = b"".join(struct.pack(">II", duration, len(packet)) for packet, duration in samples)

    def moof(data_offset: int) -> bytes:
        traf = _box(b"traf", _full_box(b"tfhd", 0, 0x020000, struct.pack(">I", TRACK_ID)),  # default-base-is-moof
                    _full_box(b"tfdt", 1, 0, struct.pack(">Q", base_time)),
                    _full_box(b"trun", 0, trun_flags, struct.pack(">Ii", len(samples), data_offset), entries))
        return _box(b"moof", _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number & 0xFFFFFFFF)), traf)

    size = len(moof(0))  # the offset's value does not change the box's size
    return moof(size + 8) + _box(b"mdat", *(packet for packet, _ in samples))
