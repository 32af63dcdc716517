"""Test audio: sine waves encoded at test time, and the checks run on what listeners receive."""

from __future__ import annotations

import io

import av
import numpy as np

CODECS = {"mp3": ("mp3", "libmp3lame"), "ogg": ("ogg", "libopus"), "aac": ("adts", "aac")}


def sine(freq: float, seconds: float, fmt: str = "mp3", rate: int = 44100, title: str | None = None) -> bytes:
    """A stereo sine wave encoded as mp3, ogg (Opus) or aac (ADTS)."""
    container_format, codec = CODECS[fmt]
    rate = 48000 if codec == "libopus" else rate
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        if title:
            container.metadata["title"] = title
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        stream.bit_rate = 128000
        n = int(seconds * rate)
        x = (0.4 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
        step = 960
        for i in range(0, n, step):
            frame = av.AudioFrame.from_ndarray(np.stack([x[i:i + step]] * 2), format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def packet_times(data: bytes) -> list[tuple[int, int]]:
    """(pts, duration) of every audio packet of a container, in the stream's time base."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        return [(int(p.pts), int(p.duration or 0)) for p in container.demux(stream) if p.size and p.pts is not None]


def decode_pcm(data: bytes, fmt: str | None = None) -> tuple[np.ndarray, int]:
    """Mono float samples and the sample rate of an encoded byte string (errors in the middle are skipped)."""
    blocks: list[np.ndarray] = []
    rate = 48000
    with av.open(io.BytesIO(data), "r", format=fmt) as container:
        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    rate = frame.sample_rate
                    blocks.append(frame.to_ndarray().reshape(len(frame.layout.channels), -1)[0]
                                  if frame.format.is_planar else frame.to_ndarray()[0][::len(frame.layout.channels)])
            except av.error.InvalidDataError:
                continue
    return (np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)), rate


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    windowed = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[:3] = 0  # ignore DC
    return float(np.argmax(spectrum) * rate / len(samples))


def frequencies_over_time(samples: np.ndarray, rate: int, window: float = 0.25) -> list[float]:
    """Dominant frequency of each window; silent windows give 0."""
    step = int(window * rate)
    out = []
    for i in range(0, len(samples) - step + 1, step):
        block = samples[i:i + step]
        out.append(0.0 if np.sqrt(np.mean(block ** 2)) < 0.01 else dominant_frequency(block, rate))
    return out
