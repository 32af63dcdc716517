"""The wire format the leader publishes its batches in (veza_stream.replication), alone: round trips and
malformed messages (a follower drops those; it never crashes on one)."""

from __future__ import annotations

import struct

import pytest

from veza_stream.pump import Batch
from veza_stream.replication import MAGIC, WireError, decode_batch, encode_batch
from veza_stream.transcoder import Chunk

BATCH: Batch = {
    "mp3": [Chunk(b"\xff\xfb" + bytes(415), 0, 1152), Chunk(b"\xff\xfb" + bytes(415), 1152, 1152)],
    "opus": [Chunk(b"OggS-header", 0, 0, header=True), Chunk(b"OggS" + bytes(range(256)), -312, 960)],
    "aac": [],
}


@pytest.mark.parametrize("title", ["", "Tone A", "Ünïcode & Söng ♪", "x" * 1000])
def test_round_trip(title: str) -> None:
    batch, decoded_title = decode_batch(encode_batch(BATCH, title))
    assert batch == BATCH and decoded_title == title
    assert list(batch) == list(BATCH)  # renditions keep their order


def test_empty_batch_and_empty_chunks() -> None:
    assert decode_batch(encode_batch({}, "quiet")) == ({}, "quiet")
    batch = {"mp3": [Chunk(b"", 0, 0)]}
    assert decode_batch(encode_batch(batch, "")) == (batch, "")


def test_large_values_survive() -> None:
    batch = {"r" * 255: [Chunk(bytes(70000), 2**62, 2**32 - 1, header=True)]}
    assert decode_batch(encode_batch(batch, "")) == (batch, "")


def test_a_long_title_is_cut_at_the_length_field() -> None:
    _, title = decode_batch(encode_batch(BATCH, "t" * 70000))
    assert title == "t" * 65535


def test_layout() -> None:
    """The documented layout, byte for byte: what another implementation would have to produce."""
    data = encode_batch({"a": [Chunk(b"xy", 5, 7, header=True)]}, "T")
    assert data == (MAGIC + struct.pack(">H", 1) + b"T" + bytes([1]) + bytes([1]) + b"a" + struct.pack(">I", 1)
                    + struct.pack(">qIBI", 5, 7, 1, 2) + b"xy")


@pytest.mark.parametrize("data", [b"", b"VZA", b"VZA2" + bytes(10), b"\x00" * 64, b"OggS" + bytes(100)])
def test_foreign_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(data)


def test_every_truncation_is_refused() -> None:
    data = encode_batch(BATCH, "Tone A")
    for end in range(len(data)):
        with pytest.raises(WireError):
            decode_batch(data[:end])


FIRST_CHUNK = struct.pack(">qIBI", 0, 1152, 0, 417)  # the first mp3 chunk's fields
MANGLED = {
    "title not UTF-8": (6, b"T", b"\xff"),
    "rendition name not UTF-8": (None, b"\x03mp3", b"\x03\xff\xfe\xfd"),
    "more renditions announced than sent": (12, bytes([3]), bytes([200])),
    "a chunk longer than the message": (None, FIRST_CHUNK, struct.pack(">qIBI", 0, 1152, 0, 2**31)),
}


@pytest.mark.parametrize("case", list(MANGLED))
def test_malformed_fields_are_refused(case: str) -> None:
    data = encode_batch(BATCH, "Tone A")
    at, old, new = MANGLED[case]
    at = data.index(old) if at is None else at
    assert data[at:at + len(old)] == old
    with pytest.raises(WireError):
        decode_batch(data[:at] + new + data[at + len(old):])
