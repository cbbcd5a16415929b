"""An aiortc client for MineStream's WebRTC sessions, on 127.0.0.1 only.

Shared by the WebRTC tests and benchmarks: a paced microphone track
(``MicTrack``), a recorder of everything the received track plays (``Heard``)
and ``RtcClient``, which posts the offer, opens the ``control`` data channel
and speaks protocol v1 on it. The server must run with ``--ice-host
127.0.0.1``: the client gathers on 127.0.0.1 only and never offers or
contacts another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import msgpack
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from client import ssl_context
from server.audio import to_int16
from server.rtc import restrict_host_candidates

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
RATE = 48000
FRAME = RATE // 50
SILENT = 1e-3  # |sample| above this (float) is not silence: -60 dBFS
TEXT = "Hello there, how are you today?"
NOTE = (
    "Where WebRTC's extra time goes: the aiortc client's receive jitter buffer (a frame leaves when 4 newer ones are in: 80 ms), "
    "Opus look-ahead (6.5 ms) and the 20 ms frame clock; the server sends the first speech frame ~2 ms after the engine's first audio. "
    "Both transports drop the engine's lead-in silence before the first word (about 36 ms for Piper; server/speech.py)."
)
DESIGN = "a warm, calm narrator"


# --- the microphone: a paced track that plays what it is given ------------------


class MicTrack(MediaStreamTrack):
    """20 ms frames at real pace: silence, or the samples given to ``play``."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._sent = 0
        self.sent_at: list[tuple[float, int]] = []
        """(time a frame was handed to aiortc, samples of ``play`` audio sent before it)."""
        self._played = 0
        self.onset_at: float | None = None
        """When the first frame of what ``play`` was last given went out."""

    def play(self, pcm: np.ndarray) -> None:
        if not len(self._pending):
            self.onset_at = None
        self._pending = np.concatenate([self._pending, to_int16(pcm)])

    def stop_playing(self) -> None:
        self._pending = np.zeros(0, np.int16)

    @property
    def playing(self) -> bool:
        return len(self._pending) > 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._sent * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        self.sent_at.append((time.monotonic(), self._played))
        if len(chunk) and self.onset_at is None:
            self.onset_at = time.monotonic()
        self._played += len(chunk)
        samples = np.zeros(FRAME, np.int16)
        samples[: len(chunk)] = chunk
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._sent * FRAME, fractions.Fraction(1, RATE)
        self._sent += 1
        return frame


def read_wav_48k(path: Path) -> np.ndarray:
    """Any audio file as float32 mono 48 kHz."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


# --- what the client hears ----------------------------------------------------------


@dataclass
class Heard:
    """Every frame the receiving track returned: when, and its mono samples."""

    times: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, frame: av.AudioFrame) -> None:
        self.times.append(time.monotonic())
        data = frame.to_ndarray().reshape(-1)
        channels = len(frame.layout.channels)
        mono = data.reshape(-1, channels)[:, 0] if channels > 1 else data
        self.frames.append(mono.astype(np.float32) / 32768.0)
        self._arrived.set()

    async def wait_until(self, predicate: Any, timeout: float = 30) -> None:
        """Until ``predicate(self)`` holds, checked as each frame arrives."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), max(0.001, deadline - time.monotonic()))

    def quiet_since(self, t: float, frames: int) -> bool:
        """The last ``frames`` frames, all received after ``t``, are silent."""
        tail = list(zip(self.times[-frames:], self.frames[-frames:], strict=True))
        return len(tail) == frames and all(when >= t and np.abs(f).max() <= SILENT for when, f in tail)

    def first_sound_after(self, t: float) -> float | None:
        """When the first non-silent sample received after ``t`` plays, if played on arrival."""
        for when, samples in zip(self.times, self.frames, strict=True):
            if when >= t:
                loud = np.flatnonzero(np.abs(samples) > SILENT)
                if len(loud):
                    return when + loud[0] / RATE
        return None

    def since(self, t: float) -> tuple[list[float], np.ndarray]:
        """Arrival times and the samples of everything received after ``t``."""
        start = next((i for i, when in enumerate(self.times) if when >= t), len(self.times))
        frames = self.frames[start:]
        return self.times[start:], np.concatenate(frames) if frames else np.zeros(0, np.float32)


# --- the client ------------------------------------------------------------------


class RtcClient:
    """Protocol v1 over a WebRTC data channel; speech arrives on the track."""

    def __init__(self, pc: RTCPeerConnection, mic: MicTrack) -> None:
        self.pc = pc
        self.mic = mic
        self.heard = Heard()
        self.messages: list[dict[str, Any]] = []
        self.session: str | None = None
        self.ready: dict[str, Any] = {}
        self.binary = True
        self.channel: Any = None
        self._waiters: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        self._ids = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ca: str | Path | ssl.SSLContext,
        token: str | None = None,
        binary: bool = True,
        offer: dict[str, Any] | None = None,
    ) -> RtcClient:
        restrict_host_candidates(["127.0.0.1"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # none: aiortc would ask Google's STUN
        client = cls(pc, MicTrack())
        client.binary = binary
        try:
            await client._negotiate(url, ca, token, offer or {})
            await client.hello(token)
        except BaseException:
            await client.close()
            raise
        return client

    async def _negotiate(self, url: str, ca: str | Path | ssl.SSLContext, token: str | None, extra: dict[str, Any]) -> None:
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.channel = self.pc.createDataChannel("control")
        opened = asyncio.get_running_loop().create_future()
        self.channel.on("open", lambda: opened.done() or opened.set_result(None))
        self.channel.on("message", self._on_message)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._listen(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **extra}
        if token is not None:
            body["token"] = token
        verify = ca if isinstance(ca, ssl.SSLContext) else ssl_context(ca)
        async with httpx.AsyncClient(verify=verify, timeout=30) as http:
            response = await http.post(f"{url}/v1/rtc/offer", json=body)
        if response.status_code != 200:
            raise OfferRefused(response.status_code, response.text)
        answer = response.json()
        self.session = answer.get("session")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(opened, 20)

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                self.heard.add(await track.recv())

    def _on_message(self, frame: bytes | str) -> None:
        message = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
        message["_at"] = time.monotonic()
        self.messages.append(message)
        for waiter in list(self._waiters):
            match, future = waiter
            if match(message) and not future.done():
                future.set_result(message)
                self._waiters.remove(waiter)

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(msgpack.packb(message, use_bin_type=True) if self.binary else json.dumps(message))

    async def wait_for(self, match: Any, timeout: float = 30) -> dict[str, Any]:
        """The first message (already received or to come) for which ``match`` is true."""
        for message in self.messages:
            if match(message):
                return message
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        return await asyncio.wait_for(future, timeout)

    async def hello(self, token: str | None) -> None:
        hello: dict[str, Any] = {"type": "hello", "protocol": 1}
        if token is not None:
            hello["token"] = token
        self.send(hello)
        self.ready = await self.wait_for(lambda m: m["type"] in ("ready", "error"))
        if self.ready["type"] != "ready":
            raise RuntimeError(f"hello refused: {self.ready}")

    def speak(self, text: str, *, design: str | None = DESIGN, voice_id: str | None = None) -> tuple[str, float]:
        uid = f"u{next(self._ids)}"
        voice = {"design": design} if voice_id is None else {"voice_id": voice_id}
        sent = time.monotonic()
        self.send({"type": "speak", "id": uid, "text": text, "voice": voice})
        return uid, sent

    async def done(self, uid: str, timeout: float = 60) -> dict[str, Any]:
        return await self.wait_for(lambda m: m["type"] == "done" and m.get("id") == uid, timeout)

    async def ping(self) -> float:
        """Data-channel round trip in seconds."""
        t = next(self._ids)
        sent = time.monotonic()
        self.send({"type": "ping", "t": t})
        pong = await self.wait_for(lambda m: m["type"] == "pong" and m.get("t") == t)
        return pong["_at"] - sent

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.mic.stop()
        await self.pc.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class OfferRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body
