"""The leader's encoded stream, carried to the other replicas over NATS.

Core NATS (not JetStream): a listener wants the stream now, not a replay, and a
follower that misses a batch only misses 100 ms of audio. One message per batch
holds every rendition, so followers see renditions in lockstep with the leader.
Wire format (big-endian): b"VZA1", u16 title length, title (UTF-8), u8 rendition count,
then per rendition: u8 name length, name, u32 chunk count, and per chunk:
i64 pts, u32 duration, u8 header flag, u32 length, data. Then, optionally, b"E" and an f64: the channel's
stream-time epoch (the Unix time of pts 0, docs/streaming.md "Stream position"), so every replica gives the
same audio the same stream time. Receivers ignore other trailing bytes (older leaders send none).
"""

from __future__ import annotations

import math
import struct

from .pump import Batch
from .transcoder import Chunk

MAGIC = b"VZA1"
_CHUNK = struct.Struct(">qIBI")
_EPOCH = struct.Struct(">cd")


class WireError(ValueError):
    """A message that is not a batch in this format (or was cut short)."""


def _take(data: bytes, pos: int, length: int) -> bytes:
    if pos + length > len(data):
        raise WireError(f"truncated: {length} bytes wanted at {pos}, {len(data) - pos} left")
    return data[pos:pos + length]


def encode_batch(batch: Batch, title: str, epoch: float | None = None) -> bytes:
    t = title.encode("utf-8")[:65535]
    parts = [MAGIC, struct.pack(">H", len(t)), t, struct.pack(">B", len(batch))]
    for name, chunks in batch.items():
        n = name.encode()
        parts += [struct.pack(">B", len(n)), n, struct.pack(">I", len(chunks))]
        for c in chunks:
            parts += [_CHUNK.pack(c.pts, c.duration, int(c.header), len(c.data)), c.data]
    if epoch is not None:
        parts.append(_EPOCH.pack(b"E", epoch))
    return b"".join(parts)


def decode_batch(data: bytes) -> tuple[Batch, str]:
    batch, title, _ = decode_replicated(data)
    return batch, title


def decode_replicated(data: bytes) -> tuple[Batch, str, float | None]:
    """The batch, its title and the leader's stream-time epoch (None when it sent none)."""
    try:
        if data[:4] != MAGIC:
            raise WireError("bad magic")
        pos = 4
        (tlen,) = struct.unpack_from(">H", data, pos)
        pos += 2
        title = _take(data, pos, tlen).decode("utf-8")
        pos += tlen
        batch: Batch = {}
        renditions = data[pos]
        pos += 1
        for _ in range(renditions):
            nlen = data[pos]
            name = _take(data, pos + 1, nlen).decode()
            pos += 1 + nlen
            (count,) = struct.unpack_from(">I", data, pos)
            pos += 4
            chunks = []
            for _ in range(count):
                pts, duration, header, length = _CHUNK.unpack_from(data, pos)
                pos += _CHUNK.size
                chunks.append(Chunk(_take(data, pos, length), pts, duration, bool(header)))
                pos += length
            batch[name] = chunks
        epoch = None
        if data[pos:pos + 1] == b"E" and len(data) - pos >= _EPOCH.size:
            (_, epoch) = _EPOCH.unpack_from(data, pos)
            if not (math.isfinite(epoch) and 0 <= epoch <= 1e11):
                raise WireError("stream-time epoch out of range")
        return batch, title, epoch
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise WireError(str(exc)) from exc
