"""WebRTC benchmark (the aiortc client itself is ``bench.rtc_client``).

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
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av
import httpx
import numpy as np

from client import Client, ssl_context
from server.audio import to_int16
from server.reference import EDGE_PAD_S

from .rtc_client import DESIGN, NOTE, RATE, RESULTS, SILENT, TEXT, Heard, OfferRefused, RtcClient
from .transport import ChunkCallback, Outcome, Stream, VoiceSpec, WssOptions, WssTransport

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
            self.sink(received, to_int16(mono))


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
        client = await self._connect()  # fail here, not per session, if WebRTC is refused
        await client.close()
        info = await self.wss.start()
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
