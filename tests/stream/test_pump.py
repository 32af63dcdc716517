"""The encoder thread with a live source: the sender is the clock, so its audio is handed on as it arrives."""

from __future__ import annotations

import statistics
import time

from tests.support.audio import sine
from veza_stream.pump import Batch, Pump
from veza_stream.sources import PushedSource
from veza_stream.spec import Rendition
from veza_stream.transcoder import SAMPLE_RATE, Transcoder

SECONDS = 6.0


def test_a_live_source_is_handed_on_as_it_arrives() -> None:
    """A sender pushing in real time: once the decoder has its first frames, the pump hands each 0.1 s batch on
    within a fraction of a second of the sender sending it. (It used to pace a live source by its own clock,
    which ran ahead by what the decoder's probe had buffered: frames queued behind each wait and went out in
    bursts, 0.3-0.5 s late.)"""
    source = PushedSource("live")
    live = 0  # live samples handed on so far
    handed: list[tuple[float, int]] = []

    def deliver(batch: Batch, title: str, on_air: str) -> None:
        nonlocal live
        if on_air == "live":
            live += sum(chunk.duration for chunk in batch["mp3"] if not chunk.header)
            handed.append((time.monotonic(), live))

    pump = Pump("pump-test", Transcoder([Rendition(name="mp3", codec="mp3", bitrateKbps=128)]), [source], deliver)
    pump.start()
    session = source.open("mp3")
    try:
        time.sleep(0.5)  # silence on air first, encoded ahead of the clock as a file would be
        data = sine(440, SECONDS, "mp3")
        bytes_per_s = len(data) / SECONDS
        step = int(bytes_per_s / 20)
        start = time.monotonic()
        for i in range(0, len(data), step):
            while not session.feed(data[i:i + step]):
                time.sleep(0.01)
            time.sleep(max(0.0, start + (i + step) / bytes_per_s - time.monotonic()))
        sent = time.monotonic() - start
    finally:
        session.end()
        pump.stop()
        pump.join(5)
    assert live > (SECONDS - 1) * SAMPLE_RATE, f"only {live / SAMPLE_RATE:.2f} s of the live source handed on"
    # How far behind the sender each batch went out, past the first 1.5 s (the decoder's probe buffers 0.5 s once).
    lags = [(when - start) - samples / SAMPLE_RATE for when, samples in handed if 1.5 < when - start <= sent]
    assert len(lags) > 20, lags
    assert statistics.median(lags) < 0.2, sorted(lags)
    assert max(lags) < 0.35, sorted(lags)
