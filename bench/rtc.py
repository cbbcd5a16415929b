"""WebRTC benchmark, and the aiortc client the tests share.

    python -m bench.rtc --url https://127.0.0.1:8443 --ca certs/ca.pem [--repeat 20] [--sessions 4]

The server must run with ``--ice-host 127.0.0.1``: the client gathers on
127.0.0.1 only and never offers or contacts another address. Measured:

* TTFA as heard: ``speak`` sent -> first non-silent sample returned by the
  client's receiving track (after aiortc's receive jitter buffer, as a player
  would get it). The same figure over the WebSocket (first non-silent sample
  of the first ``audio`` message) is measured against the same server.
* uplink latency: a sample handed to the client's microphone track -> that
  sample in the server's recording (see ``uplink_ms``: from where the server
  cut a recording stopped by ``voice_end`` mid-tone).
* server CPU per session: the server process's CPU while N sessions each
  hold a connected peer and speak, per session, as a share of one core.

Results are printed and written to the "WebRTC" section of bench/RESULTS.md.

``transport(options)`` (``RtcTransport``) is the same client as a transport for
the load generator: ``python -m bench --transport webrtc --url
wss://127.0.0.1:PORT/v1/stream --ca certs/ca.pem``. Each simulated person gets
its own peer connection; ``speak`` goes over the data channel and the
utterance's audio is what the received track plays, 48 kHz int16 mono, with
the moment each 20 ms frame left aiortc's jitter buffer. A WebRTC track
carries silence between utterances, so an utterance's audio starts at the
first non-silent frame (any sample above -60 dBFS) after ``speak``: the
client-side TTFA over WebRTC is ``speak`` sent -> that frame, jitter buffer
included. It ends once ``done`` has arrived and the track has been quiet for
60 ms (at most 300 ms after ``done``: the frames still in flight). "heard"
stays the first sample above -40 dBFS. The cloned voice is made and deleted
over wss and the HTTP API, like ``WssTransport`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import itertools
import json
import re
import ssl
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av
import httpx
import msgpack
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from client import Client, ssl_context
from server.reference import EDGE_PAD_S
from server.rtc import restrict_host_candidates

from .transport import ChunkCallback, Outcome, Stream, VoiceSpec, WssOptions, WssTransport

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


def to_int16(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype == np.int16:
        return pcm
    return (np.clip(pcm, -1, 1) * 32767).round().astype(np.int16)


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


# --- the load generator's transport: python -m bench --transport webrtc ------------

LOUD_I16 = SILENT * 32768
TAIL_QUIET_FRAMES = 3
"""After ``done``: the utterance ends once this many frames in a row were silent (60 ms)..."""
TAIL_MAX_S = 0.3
"""...or this long after ``done`` (what is still in flight: the jitter buffer's 80 ms and the network)."""
TRANSPORT_NOTE = (
    "WebRTC: client TTFA is speak -> the first non-silent frame out of the aiortc client's jitter buffer "
    "(the track carries silence between utterances); heard is the first sample above -40 dBFS."
)


class _Tap(Heard):
    """Hands each received frame (perf_counter arrival, mono int16) to ``sink``; keeps nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.sink: Any = None

    def add(self, frame: av.AudioFrame) -> None:
        received = time.perf_counter()
        data = frame.to_ndarray().reshape(-1)
        channels = len(frame.layout.channels)
        mono = data.reshape(-1, channels)[:, 0] if channels > 1 else data
        if self.sink is not None:
            self.sink(received, to_int16(mono) if mono.dtype != np.int16 else mono)


@dataclass
class _Utterance:
    on_chunk: ChunkCallback
    started: bool = False
    done_at: float | None = None
    quiet: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class RtcStream:
    """One simulated person: a peer connection; one utterance at a time."""

    def __init__(self, client: RtcClient) -> None:
        self.client = client
        self._current: _Utterance | None = None
        tap = _Tap()
        tap.sink = self._frame
        client.heard = tap

    def _frame(self, received: float, pcm: np.ndarray) -> None:
        u = self._current
        if u is None or u.finished.is_set():
            return  # silence between utterances
        loud = len(pcm) > 0 and float(np.abs(pcm.astype(np.int32)).max()) > LOUD_I16
        if u.started or loud:
            u.started = True
            u.on_chunk(received, pcm)
        if u.done_at is not None and received >= u.done_at:
            u.quiet = 0 if loud else u.quiet + 1
            if (u.started and u.quiet >= TAIL_QUIET_FRAMES) or received - u.done_at >= TAIL_MAX_S:
                u.finished.set()

    async def utter(self, text: str, voice: VoiceSpec, on_chunk: ChunkCallback) -> Outcome:
        client = self.client
        client.messages.clear()  # earlier utterances' messages: nobody waits on them
        u = self._current = _Utterance(on_chunk)
        outcome = Outcome(time.perf_counter())
        try:
            uid, _ = client.speak(text, design=voice.design, voice_id=voice.voice_id if voice.mode == "clone" else None)
            message = await self._wait(lambda m: m.get("id") == uid and m["type"] in ("done", "error"))
            if message is not None and message["type"] == "error":
                outcome.error = str(message.get("code", "error"))
                message = None if message.get("fatal") else await self._wait(lambda m: m.get("id") == uid and m["type"] == "done", 10)
            if message is None:
                outcome.error = outcome.error or "closed"
                return outcome
            outcome.done = message
            u.done_at = time.perf_counter()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(u.finished.wait(), TAIL_MAX_S + 0.1)  # the track may have stopped
            return outcome
        finally:
            u.finished.set()
            self._current = None

    async def _wait(self, match: Any, timeout: float | None = None) -> dict[str, Any] | None:
        """The matching message, or None once the peer connection is gone (or ``timeout`` passed)."""
        waiter = asyncio.ensure_future(self.client.wait_for(match, timeout=timeout or 1e9))
        try:
            while True:
                finished, _ = await asyncio.wait({waiter}, timeout=1.0)
                if finished:
                    try:
                        return waiter.result()
                    except asyncio.TimeoutError:
                        return None
                if self.client.pc.connectionState in ("failed", "closed") or self.client.channel.readyState == "closed":
                    return None
        finally:
            waiter.cancel()

    async def close(self) -> None:
        await self.client.close()


class RtcTransport:
    """``--transport webrtc``: a peer connection per stream; wss and HTTP only for setup (voices, /healthz, /metrics)."""

    name = "webrtc"
    sample_rate = RATE

    def __init__(self, options: Any) -> None:
        self.options = options
        self.wss = WssTransport(WssOptions(options.url, options.ca, options.insecure, options.token))
        parts = urlsplit(options.url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--transport webrtc: the client gathers on 127.0.0.1 only; give a loopback --url (server run with --ice-host 127.0.0.1)")
        scheme = "http" if parts.scheme in ("ws", "http") else "https"
        self.base_url = urlunsplit((scheme, parts.netloc, "", "", ""))
        self.ssl = ssl_context(options.ca, insecure=options.insecure)

    async def _connect(self) -> RtcClient:
        try:
            return await RtcClient.connect(self.base_url, ca=self.ssl, token=self.options.token)
        except (OfferRefused, RuntimeError, httpx.HTTPError) as exc:
            raise ConnectionError(f"WebRTC session refused: {exc}") from exc  # an OSError: the load counts it

    async def start(self) -> dict[str, Any]:
        client = await self._connect()
        try:
            info: dict[str, Any] = {"engine": client.ready.get("engine", {}), "limits": client.ready.get("limits", {})}
        finally:
            await client.close()
        async with self.http() as http:
            response = await http.get("/healthz")
            if response.status_code == 200:
                info["health"] = response.json()
        info["transport_note"] = TRANSPORT_NOTE
        return info

    async def clone_voice(self, design: str, text: str) -> str:
        return await self.wss.clone_voice(design, text)

    async def open(self) -> Stream:
        return RtcStream(await self._connect())

    async def close(self) -> None:
        await self.wss.close()

    def metrics_url(self) -> str:
        return self.base_url + "/metrics"

    def http(self) -> httpx.AsyncClient:
        return self.wss.http()


def transport(options: Any) -> RtcTransport:
    """What ``bench.transport.make_transport("webrtc", options)`` calls (``url``, ``ca``, ``insecure``, ``token``)."""
    return RtcTransport(options)


# --- measurements ------------------------------------------------------------------


async def ttfa_heard_rtc(client: RtcClient, text: str) -> tuple[float, float]:
    """(TTFA as heard, server TTFA) in ms for one utterance."""
    await asyncio.sleep(0.3)  # let the previous utterance's tail play out
    uid, sent = client.speak(text)
    done = await client.done(uid)
    heard = client.heard.first_sound_after(sent)
    assert heard is not None, "no sound received"
    return (heard - sent) * 1000, float(done["ttfa_ms"])


async def ttfa_heard_ws(ws: Client, text: str) -> tuple[float, float]:
    speech = await ws.speak(text, design=DESIGN)
    first: float | None = None
    async for chunk in speech:
        loud = np.flatnonzero(np.abs(np.frombuffer(chunk.data, "<i2").astype(np.float32) / 32768) > SILENT)
        if first is None and len(loud):
            first = chunk.received + loud[0] / ws.sample_rate
    assert first is not None and speech.done is not None
    return (first - speech.sent) * 1000, float(speech.done["ttfa_ms"])


async def uplink_ms(client: RtcClient, http: httpx.AsyncClient, tone: np.ndarray) -> float:
    """One uplink figure: when the server stopped recording vs which sample it had last.

    The tone starts (client clock ``onset``) after the recording has begun and
    is still playing when ``voice_end`` is sent at ``ended``; the server stops
    at ``ended + one way`` with the sample the client sent ``uplink`` earlier,
    so the reference holds ``ended + one_way - uplink - onset`` of tone plus
    the lead-in pad ``prepare_reference`` keeps before speech.
    """
    await asyncio.sleep(0.3)  # what the last run sent after its cut must not start this one
    one_way = statistics.median([await client.ping() for _ in range(5)]) / 2
    ref = f"up{next(client._ids)}"
    client.send({"type": "voice_begin", "ref": ref, "source": "rtc"})
    await asyncio.sleep(0.4)  # recording: silence first, so the onset is inside it
    client.mic.play(tone)
    await asyncio.sleep(2.0)
    ended = time.monotonic()
    client.send({"type": "voice_end", "ref": ref})
    client.mic.stop_playing()  # everything the server will record was sent before `ended`
    voice = await client.wait_for(lambda m: m.get("ref") == ref and m["type"] in ("voice", "error"), 10)
    if voice["type"] != "voice":
        raise RuntimeError(f"recording failed: {voice}")
    await http.delete(f"/v1/voices/{voice['voice_id']}")
    assert client.mic.onset_at is not None
    held = ended + one_way - client.mic.onset_at + EDGE_PAD_S
    return (held - voice["duration_ms"] / 1000) * 1000


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def server_pid(port: int) -> int | None:
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
            return conn.pid
    return None


async def cpu_per_session(url: str, ca: str, token: str | None, sessions: int, seconds: float) -> dict[str, float]:
    """Server CPU (share of one core) per session: idle peers, then all speaking."""
    pid = server_pid(int(re.search(r":(\d+)", url.split("//", 1)[1]).group(1)))  # type: ignore[union-attr]
    if pid is None:
        return {}
    clients = [await RtcClient.connect(url, ca=ca, token=token) for _ in range(sessions)]
    try:
        await asyncio.sleep(1)
        idle = await _cpu_share(pid, seconds)
        long_text = " ".join([TEXT] * 6)
        ids = [c.speak(long_text)[0] for c in clients]
        speaking = await _cpu_share(pid, seconds)
        for c, uid in zip(clients, ids, strict=True):
            c.send({"type": "cancel", "id": uid})
        return {"idle": idle / sessions, "speaking": speaking / sessions}
    finally:
        for c in clients:
            await c.close()


async def _cpu_share(pid: int, seconds: float) -> float:
    start_cpu, start = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (_cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


# --- the run ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> str:
    rtc = await RtcClient.connect(args.url, ca=args.ca, token=args.token)
    try:
        await asyncio.sleep(0.5)
        rtc_runs = [await ttfa_heard_rtc(rtc, args.text) for _ in range(args.repeat)]
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        async with httpx.AsyncClient(base_url=args.url, verify=ssl_context(args.ca), headers=headers) as http:
            uplink = [await uplink_ms(rtc, http, _tone()) for _ in range(args.uplink_runs)]
    finally:
        await rtc.close()
    ws_url = args.url.replace("https://", "wss://") + "/v1/stream"
    async with await Client.connect(ws_url, ca=args.ca, token=args.token) as ws:
        ws_runs = [await ttfa_heard_ws(ws, args.text) for _ in range(args.repeat)]
    cpu = await cpu_per_session(args.url, args.ca, args.token, args.sessions, args.cpu_seconds)
    return report(args, rtc_runs, ws_runs, uplink, cpu)


def _tone() -> np.ndarray:
    """Three seconds of a steady, always-loud voice-like tone (its onset is sharp)."""
    t = np.arange(3 * RATE) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def report(
    args: argparse.Namespace, rtc: list[tuple[float, float]], ws: list[tuple[float, float]], uplink: list[float], cpu: dict[str, float]
) -> str:
    def row(name: str, runs: list[tuple[float, float]]) -> str:
        heard, server = [r[0] for r in runs], [r[1] for r in runs]
        return (
            f"| {name} | {statistics.median(heard):.0f} | {pct(heard, 0.95):.0f} | "
            f"{statistics.median(server):.0f} | {statistics.median(heard) - statistics.median(server):.0f} |"
        )

    lines = [
        f'Preview engine on loopback, {args.repeat} utterances of "{args.text}" per transport, '
        "one session at a time; `python -m bench.rtc`.",
        "",
        "| transport | TTFA heard p50 ms | p95 ms | server TTFA p50 ms | transport + buffering ms |",
        "|---|---:|---:|---:|---:|",
        row("WebRTC (aiortc client, default jitter buffer)", rtc),
        row("WebSocket (first non-silent audio message)", ws),
        "",
        NOTE,
        "",
        f"Uplink latency (microphone track -> server recording): median {statistics.median(uplink):.0f} ms "
        f"(runs: {', '.join(f'{u:.0f}' for u in uplink)}).",
    ]
    if cpu:
        lines.append(
            f"Server CPU per WebRTC session ({args.sessions} sessions, share of one core): "
            f"idle {100 * cpu['idle']:.1f} %, speaking {100 * cpu['speaking']:.1f} % "
            "(speaking includes synthesis by the preview engine)."
        )
    return "\n".join(lines) + "\n"


def write_results(text: str) -> None:
    section = "## WebRTC\n\n" + text.strip() + "\n"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## WebRTC\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rtc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="https://127.0.0.1:PORT of a server run with --ice-host 127.0.0.1")
    parser.add_argument("--ca", required=True, help="the server's CA (certs/ca.pem)")
    parser.add_argument("--token")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--uplink-runs", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--cpu-seconds", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    text = asyncio.run(run(args))
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
