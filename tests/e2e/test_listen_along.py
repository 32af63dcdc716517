"""Listen-along through the front door: the example room `general` (two chat replicas) is bound to the channel
`radio`, scaled here to two stream replicas.

A broadcaster goes on air with a tone that changes from 440 Hz to 880 Hz. The track change reaches chat clients
on both chat replicas within 2 s. Two listeners follow docs/streaming.md, "Stream position": A plays the
progressive stream (position = `X-Veza-Stream-Time` + seconds played), B plays HLS (position = the segment's
`#EXT-X-PROGRAM-DATE-TIME` + time into it) 5 s behind A. Both find the tone change at the same stream position;
A reacts when it hears it, and B, on the other chat replica, shows the reaction when its own playback reaches
that position: 5 s later, at the tone change. The players are simulated (no sound card): each plays at real speed,
A from 1 s after its first byte (a player's start-up buffer), B 5 s behind A.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import av
import numpy as np
from tests.support.audio import decode_pcm, frequencies_over_time
from tests.support.chat import ChatClient
from tests.support.e2e import Account, Platform, connect_chat
from tests.support.waiting import wait_for

SOURCE_PASSWORD = "veza-dev-source"  # examples/streamchannel.yaml's Secret
BEHIND = 5.0  # how far B plays behind A
START_BUFFER = 1.0  # A starts playing this long after its first byte
WINDOW = 0.05  # the resolution of the tone-change search (s)


def tone_change(samples: np.ndarray, rate: int) -> float | None:
    """Seconds into `samples` where a 440 Hz tone turns into 880 Hz (the start of the first 880 Hz window after at
    least 0.5 s of 440 Hz, refined to the sample where the 440 Hz one ends), or None."""
    freqs = frequencies_over_time(samples, rate, WINDOW)
    low = 0
    for i, f in enumerate(freqs):
        if abs(f - 440) < 30:
            low += 1
        elif abs(f - 880) < 30 and low * WINDOW >= 0.5 and all(abs(g - 880) < 30 for g in freqs[i:i + 4]):
            return i * WINDOW
        else:
            low = 0
    return None


def two_tones(first: float, second: float, change_at: float, seconds: float, rate: int = 44100) -> bytes:
    """One MP3 stream of a tone that changes frequency at `change_at` seconds (one stream: a live decoder stops at
    the end of the first of two concatenated files)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.bit_rate = 128000
        t = np.arange(int(seconds * rate)) / rate
        x = (0.4 * np.sin(2 * np.pi * np.where(t < change_at, first, second) * t)).astype(np.float32)
        for i in range(0, len(x), 960):
            frame = av.AudioFrame.from_ndarray(np.stack([x[i:i + 960]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


async def paced(data: bytes, seconds: float, pieces: int = 100) -> AsyncIterator[bytes]:
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(seconds / pieces)


class ProgressiveListener:
    """A: the progressive stream, played in real time from its first byte."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.body = bytearray()
        self.stream_start: float | None = None  # X-Veza-Stream-Time
        self.first_byte: float | None = None  # wall clock
        self.task: asyncio.Task[None] | None = None

    def position(self, wall: float) -> float:
        assert self.stream_start is not None and self.first_byte is not None
        return self.stream_start + (wall - self.first_byte - START_BUFFER)

    async def run(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self.platform.url("/stream/radio/mp3-128"), headers=self.platform.headers) as r:
            assert r.status == 200
            self.stream_start = float(r.headers["X-Veza-Stream-Time"])
            async for data in r.content.iter_any():
                if self.first_byte is None:
                    self.first_byte = time.time()
                self.body += data

    def change(self) -> float | None:
        """The stream time of the tone change in what was received."""
        try:
            samples, rate = decode_pcm(bytes(self.body), "mp3")
        except av.error.FFmpegError:  # too little yet to be recognised as MP3
            return None
        at = tone_change(samples, rate)
        return None if at is None or self.stream_start is None else self.stream_start + at


class HlsListener:
    """B: HLS segments as the media playlist lists them, each with its program date-time."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.segments: dict[int, tuple[float, bytes]] = {}  # sequence -> (program date-time, bytes)
        self.errors: list[str] = []  # what went wrong while polling (a player keeps polling through it)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                await self.poll(session)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # a reset or a 5xx under load
                self.errors.append(repr(exc))
            await asyncio.sleep(0.5)

    async def poll(self, session: aiohttp.ClientSession) -> None:
        base = "/stream/radio/hls/mp3-128/"
        async with session.get(self.platform.url(base + "index.m3u8"), headers=self.platform.headers) as r:
            r.raise_for_status()
            text = await r.text()
        pdt = None
        for line in text.splitlines():
            if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
            elif line and not line.startswith("#"):
                sequence = int(line.split(".")[0])
                if sequence not in self.segments and pdt is not None:
                    # As players do, a listed segment that is not there yet is asked for again: behind the front
                    # door the next request may reach the other replica, a moment behind the one that listed it.
                    for _ in range(5):
                        async with session.get(self.platform.url(base + line), headers=self.platform.headers) as s:
                            if s.status == 200:
                                self.segments[sequence] = (pdt, await s.read())
                                break
                            self.errors.append(f"{line}: {s.status}")
                        await asyncio.sleep(0.3)
                pdt = None

    def change(self) -> float | None:
        """The stream time of the tone change, played as a player plays segments: back to back, one stream.

        Each contiguous run of segments is decoded as one, so a change near a segment's edge is found like any
        other; the segment it falls in (by its frames' durations) gives the program date-time to count from."""
        ordered = sorted(self.segments.items())
        runs: list[list[tuple[float, bytes]]] = []
        for i, (sequence, segment) in enumerate(ordered):
            if i == 0 or sequence != ordered[i - 1][0] + 1:
                runs.append([])
            pdt, data = segment
            runs[-1].append((pdt, without_id3(data)))
        for run in runs:
            samples, rate = decode_pcm(b"".join(data for _, data in run), "mp3")
            at = tone_change(samples, rate)
            if at is None:
                continue
            start = 0.0
            for pdt, data in run:
                length = mp3_seconds(data)
                if at < start + length:
                    return pdt + (at - start)
                start += length
        return None


def without_id3(segment: bytes) -> bytes:
    """A packed-audio segment's MP3 frames, without the ID3 tag in front (its timestamp): a player feeds its
    decoder the frames back to back; left in, each tag costs the next frame when the bytes are decoded as one."""
    if segment[:3] != b"ID3":
        return segment
    size = 0
    for byte in segment[6:10]:  # syncsafe: 7 bits a byte
        size = size << 7 | byte
    return segment[10 + size:]


def mp3_seconds(data: bytes) -> float:
    """The duration of an MP3 segment, from its frames (no decoding)."""
    with av.open(io.BytesIO(data), "r", format="mp3") as container:
        return sum(float(p.duration * p.time_base) for p in container.demux(container.streams.audio[0])
                   if p.size and p.duration is not None and p.time_base is not None)


async def on_another_replica(platform: Platform, token: str, than: ChatClient) -> ChatClient:
    """A chat client served by another chat replica than `than` (the welcome's `session` names the replica)."""
    for _ in range(30):
        client = await connect_chat(platform, token)
        if client.welcome["session"] != than.welcome["session"]:
            return client
        await client.close()
    raise AssertionError("every socket landed on one chat replica")


async def test_track_changes_and_reactions_at_a_stream_position(platform: Platform) -> None:
    platform.kubectl("scale", "streamchannel", "radio", "--replicas=2")
    try:
        await _listen_along(platform)
    finally:
        platform.kubectl("scale", "streamchannel", "radio", "--replicas=1")
        # The tests after this one find the platform as it was: one stream pod, none going away (a second one
        # still Ready when the next module looked became a scrape target that vanished under it).
        await wait_for(lambda: len(platform.pods("app.kubernetes.io/component=stream")) == 1, timeout=120,
                       interval=1, message="one stream pod again")


async def _listen_along(platform: Platform) -> None:
    await wait_for(lambda: len(platform.ready_pods("app.kubernetes.io/component=stream")) == 2, timeout=120,
                   interval=1, message="two stream replicas")
    await wait_for(lambda: platform.front_door_servers("stream-radio") == 2, timeout=60, interval=1,
                   message="the front door balances over both stream pods")
    await wait_for(lambda: platform.front_door_servers("chat-general") >= 2, timeout=60, interval=1,
                   message="the front door balances over the chat pods")
    async with aiohttp.ClientSession() as session:
        ada = await Account(platform, "Ada").register(session)
        bea = await Account(platform, "Bea").register(session)
        a_chat = await connect_chat(platform, await ada.service_token(session, "veza-chat"))
        b_chat = await on_another_replica(platform, await bea.service_token(session, "veza-chat"), a_chat)
        assert a_chat.welcome["room"]["channel"] == "radio"

        a, b = ProgressiveListener(platform), HlsListener(platform)
        listening = [asyncio.create_task(a.run(session)), asyncio.create_task(b.run(session))]
        title = f"Listen-along {uuid.uuid4().hex[:6]}"
        tone = two_tones(440, 880, 8.0, 22.0)
        auth = "Basic " + base64.b64encode(f"source:{SOURCE_PASSWORD}".encode()).decode()
        source = asyncio.create_task(session.put(
            platform.url("/stream/radio/source"), data=paced(tone, 22.0),
            headers={**platform.headers, "Authorization": auth, "Content-Type": "audio/mpeg", "Ice-Name": title}))
        try:
            # The track change, on both chat replicas, within 2 s of going on air (the encoder's clock and the
            # clients' are this machine's).
            delays = []
            for client in (a_chat, b_chat):
                event = await client.expect("event", kind="nowplaying", text=title, timeout=30)
                delays.append(time.time() - event["now_playing"]["started_at"])
            assert max(delays) < 2.0, f"the track change reached the chat clients after {delays} s"

            # A hears the tone change at its position t, and reacts then.
            t_a = await wait_for(a.change, timeout=30, interval=0.2, message="A receives the tone change")
            heard = a.position(time.time())
            assert heard < t_a, "A heard the change before its audio arrived: the burst should keep it ahead"
            await asyncio.sleep(t_a - heard)  # A's player reaches t: the wait is A listening
            sent = time.time()
            await a_chat.send({"type": "react_at", "emoji": "🎵", "position": t_a})

            # B (5 s behind A, on the other chat replica) gets the reaction before its playback needs it, and
            # shows it when its position reaches t: 5 s after A made it.
            got = await b_chat.expect("reaction_at", timeout=BEHIND)
            arrived = time.time()
            assert got["position"] == t_a and got["user"]["id"] == ada.user_id
            # B's player is 5 s behind A's: it reaches t when A's did, plus 5 s.
            b_reaches = a.first_byte + START_BUFFER + (t_a - a.stream_start) + BEHIND  # type: ignore[operator]
            assert arrived < b_reaches, f"the reaction came {arrived - b_reaches:.2f} s after B passed its position"
            shown = max(arrived, b_reaches)
            assert abs(shown - sent - BEHIND) < 0.3, shown - sent

            # What B plays at that position is the tone change too: the two ways to learn a position agree.
            try:
                t_b = await wait_for(b.change, timeout=30, interval=0.5, message="B's segments hold the tone change")
            except (AssertionError, TimeoutError) as exc:
                raise AssertionError(f"{exc}; B holds segments {sorted(b.segments)}, errors {b.errors[-5:]}") from None
            print(f"listen-along: track change in the chat after {max(delays):.3f} s; tone change at {t_a:.3f} "
                  f"(progressive) and {t_b:.3f} (HLS); reaction relayed in "
                  f"{arrived - sent:.3f} s, shown {shown - sent:.3f} s after it was made")
            assert abs(t_a - t_b) < 0.2, (t_a, t_b)
        finally:
            source.cancel()
            for task in listening:
                task.cancel()
            await asyncio.gather(source, *listening, return_exceptions=True)
            for client in (a_chat, b_chat):
                await client.close()
