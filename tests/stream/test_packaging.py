"""Repackaging Ogg Opus for HLS: packets out of pages, their durations, and fMP4 that a demuxer reads back."""

from __future__ import annotations

import io
import itertools
from fractions import Fraction

import av
import pytest

from veza_stream import fmp4, ogg, opus
from veza_stream.hls import Segment, Segmenter
from veza_stream.spec import Rendition
from veza_stream.transcoder import Chunk, OpusOgg


def ogg_pages(packets: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Header pages and one string of pages per packet, written by libavformat's Ogg muxer."""
    sink = io.BytesIO()
    with av.open(sink, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="stereo")
        container.start_encoding()
        header = sink.getvalue()
        written = [len(header)]
        for i, data in enumerate(packets):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = i * 960
            packet.duration = 960
            packet.time_base = Fraction(1, 48000)
            container.mux(packet)
            written.append(len(sink.getvalue()))
    body = sink.getvalue()
    written[-1] = len(body)  # the last packet's page is written at close
    return header, [body[a:b] for a, b in itertools.pairwise(written)]


def test_packets_come_out_of_pages_whole_even_across_pages() -> None:
    # 70 kB is more than one page holds (255 x 255 bytes): the packet continues on the next page.
    packets = [b"\xfc" + bytes([i]) * size for i, size in enumerate((100, 70_000, 254, 255, 510, 3))]
    header, pages = ogg_pages(packets)
    assert ogg.PacketReader().feed(header)[0].startswith(b"OpusHead")
    reader = ogg.PacketReader()
    out = [p for chunk in pages for p in reader.feed(chunk)]
    assert out == packets
    with pytest.raises(ogg.OggError):
        ogg.PacketReader().feed(b"RIFF" + bytes(40))
    for cut in (20, 60):  # inside the first page's header, inside its body
        with pytest.raises(ogg.OggError):
            ogg.PacketReader().feed(b"".join(pages)[:cut])


def test_header_pages_are_what_comes_before_the_first_audio() -> None:
    header, pages = ogg_pages([b"\xfc" + bytes(300)] * 5)
    stream = header + b"".join(pages)
    for step in (1, 7, 100, len(stream)):  # however the bytes arrive
        found = ogg.HeaderPages()
        for start in range(0, len(stream), step):
            found.feed(stream[start:start + step])
        assert found.done and bytes(found.data) == header, step
    not_ogg = ogg.HeaderPages()
    not_ogg.feed(b"\xff\xfb" + bytes(100))  # MP3: nothing to keep
    assert not_ogg.done and not not_ogg.data


@pytest.mark.parametrize(("packet", "samples"), [
    (bytes([31 << 3]), 960),  # CELT 20 ms, one frame
    (bytes([(16 << 3) | 1, 0]), 240),  # CELT 2.5 ms, two frames
    (bytes([(1 << 3) | 3, 3]), 2880),  # SILK 20 ms, code 3 with three frames
    (bytes([(15 << 3) | 2]), 1920),  # hybrid 20 ms, two frames
    (b"", 0),
])
def test_opus_packet_durations_from_the_toc(packet: bytes, samples: int) -> None:
    assert opus.packet_samples(packet) == samples


def test_segments_of_an_opus_stream_are_fmp4_on_one_timeline() -> None:
    encoder = OpusOgg(Rendition(name="o", codec="opus", bitrateKbps=64), start_pts=10 * 48000 + 20_000)
    frame = av.AudioFrame(format="fltp", layout="stereo", samples=1024)
    frame.sample_rate = 48000
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    chunks = [Chunk(encoder.header(), encoder.pts, 0, header=True)]
    for _ in range(200):  # 4.3 s of silence
        chunks.extend(encoder.encode(frame))
    segmenter = Segmenter("opus", 1.0)
    segmenter.feed(chunks)
    segments = list(segmenter.segments)
    # The encoder started inside segment 10: that one is incomplete and not listed.
    assert len(segments) >= 3 and segments[0].sequence == 11 and segments[0].init is not None
    assert [s.sequence for s in segments] == list(range(segments[0].sequence, segments[0].sequence + len(segments)))
    with av.open(io.BytesIO(segments[0].init + b"".join(s.data for s in segments))) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.rate == 48000 and stream.channels == 2
        times = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
    assert times[0][0] == segments[0].pts  # the first fragment starts where its segment does
    assert all(b == a + d for (a, d), (b, _) in itertools.pairwise(times))
    assert len(times) == 50 * len(segments)
    assert fmp4.init_segment(ogg.PacketReader().feed(encoder.header())[0]) == segments[0].init


def test_a_replica_joining_mid_segment_lists_only_segments_the_others_list_alike() -> None:
    """A follower starts a few frames into segment 2 (less than a tenth of it missing): it lists no segment 2,
    since the leader's segment 2 has those frames; from 3 on both list the same bytes at the same time."""
    frame = 1152  # samples of one MP3 frame
    chunks = [Chunk(i.to_bytes(4, "big"), i * frame, frame) for i in range(200)]
    first_of_2 = next(i for i, c in enumerate(chunks) if c.pts // 48000 == 2)

    def listed(start: int) -> dict[int, Segment]:
        segmenter = Segmenter("mp3", 1.0, keep=10, stream_time=lambda pts: 1_700_000_000 + pts / 48000)
        segmenter.feed(chunks[start:])
        return {s.sequence: s for s in segmenter.segments}

    leader, follower = listed(0), listed(first_of_2 + 2)
    assert 0 in leader and min(follower) == 3
    for sequence in follower:
        assert (follower[sequence].data, follower[sequence].program_time) == \
            (leader[sequence].data, leader[sequence].program_time)
