"""The transcoder alone: two sources of different formats in a row come out as one continuous stream."""

from __future__ import annotations

import io
import itertools

import av
import pytest

from tests.support.audio import decode_pcm, dominant_frequency, frequencies_over_time, sine
from veza_stream import opus
from veza_stream.pump import silence
from veza_stream.sources import decode
from veza_stream.spec import Rendition
from veza_stream.transcoder import CANONICAL_FORMAT, LAYOUT, SAMPLE_RATE, OpusOgg, Transcoder

FORMATS = {"mp3": "mp3", "aac": "aac", "opus": "ogg"}


@pytest.mark.parametrize("codec", ["mp3", "aac", "opus"])
def test_two_sources_one_continuous_stream(codec: str) -> None:
    transcoder = Transcoder([Rendition(name=codec, codec=codec, bitrateKbps=96)])
    header = transcoder.headers()[codec]
    chunks = []
    # A 44.1 kHz MP3 then a 48 kHz Opus file: the second needs no resampling and keeps its own time base.
    for source in (sine(440, 2.0, "mp3"), sine(880, 2.0, "ogg")):
        for frame, _ in decode(source):
            chunks.extend(transcoder.encode(frame)[codec])

    for before, after in itertools.pairwise(chunks):
        assert after.pts == before.pts + before.duration, (codec, before, after)
    # AAC starts one frame early: the encoder's priming samples (players skip them).
    assert chunks[0].pts == (-1024 if codec == "aac" else 0)
    encoded = sum(c.duration for c in chunks)
    assert 3.8 * SAMPLE_RATE <= encoded <= 4.0 * SAMPLE_RATE + 1024, encoded

    body = header + b"".join(c.data for c in chunks)
    samples, rate = decode_pcm(body, FORMATS[codec])
    assert abs(len(samples) / rate - encoded / SAMPLE_RATE) < 0.1
    freqs = frequencies_over_time(samples, rate, 0.25)
    assert sum(abs(f - 440) < 15 for f in freqs) >= 6 and sum(abs(f - 880) < 15 for f in freqs) >= 6, freqs
    if codec == "opus":
        # Ogg granule positions count every sample from 0, with no jump where the source changed.
        with av.open(io.BytesIO(body), "r", format="ogg") as container:
            ends = [p.pts + p.duration for p in container.demux(audio=0) if p.pts is not None and p.duration]
        assert ends == sorted(ends) and all(b - a == 960 for a, b in itertools.pairwise(ends))


def test_system_libopus_times_packets_as_pyav_does() -> None:
    assert opus.load() is not None, "hack/bootstrap.sh installs libopus0"
    rendition = Rendition(name="opus", codec="opus", bitrateKbps=96)
    streams = {}
    for native in (True, False):
        transcoder = Transcoder([rendition], prefer_system_codecs=native)
        encoder = transcoder.encoders["opus"]
        assert isinstance(encoder, OpusOgg) and (encoder.native is not None) == native
        chunks = [c for frame, _ in decode(sine(440, 1.0, "mp3")) for c in transcoder.encode(frame)["opus"]]
        streams[native] = transcoder.headers()["opus"] + b"".join(c.data for c in chunks)
    timing = {}
    for native, body in streams.items():
        with av.open(io.BytesIO(body), "r", format="ogg") as container:
            timing[native] = [(p.pts, p.duration) for p in container.demux(audio=0) if p.size]
        samples, rate = decode_pcm(body, "ogg")
        assert abs(dominant_frequency(samples, rate) - 440) < 5
    assert timing[True] == timing[False]


def test_silence_is_silent_canonical_audio() -> None:
    """The pump's filler when nothing is on air: PyAV leaves new planes uninitialised, so it zeroes them itself."""
    for samples in (1024, 960, 1):
        frame = silence(samples)
        assert (frame.format.name, frame.layout.name, frame.sample_rate) == (CANONICAL_FORMAT, LAYOUT, SAMPLE_RATE)
        pcm = frame.to_ndarray()
        assert pcm.shape == (2, samples) and not pcm.any()
    transcoder = Transcoder([Rendition(name="mp3", codec="mp3", bitrateKbps=128)])
    chunks = [c for _ in range(100) for c in transcoder.encode(silence())["mp3"]]
    samples, rate = decode_pcm(transcoder.headers()["mp3"] + b"".join(c.data for c in chunks), "mp3")
    assert len(samples) > rate and abs(samples).max() < 1e-3
