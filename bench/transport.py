"""How the benchmark reaches an engine: the interface, and protocol v1 over wss.

A ``Transport`` opens ``Stream``s (one per simulated person); a stream speaks
one utterance at a time and hands every audio chunk, with the moment it
arrived, to a callback. The load generator sees nothing else, so the same
figures come out of wss, engine-direct (``bench.engine_direct``) and, once it
exists, WebRTC: ``bench/rtc.py`` provides ``transport(options) -> Transport``
and ``--transport webrtc`` picks it up (see ``make_transport``).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed

from client import Client, ServerError, Timeouts, ssl_context
from server.audio import wav_bytes

SAMPLE_RATE = 24000
UNBOUNDED_UTTERANCES = Timeouts(first_audio=None, idle=None)
ChunkCallback = Callable[[float, np.ndarray], None]
"""(perf_counter when the chunk arrived, its PCM as int16 or float32 mono)."""


@dataclass(frozen=True)
class VoiceSpec:
    mode: str
    """design or clone."""
    design: str | None = None
    voice_id: str | None = None


@dataclass
class Outcome:
    sent: float
    """perf_counter when the request left."""
    done: dict[str, Any] | None = None
    """The server's ``done`` (ttfa_ms, rtf, audio_ms, cancelled)."""
    error: str | None = None
    """A protocol error code, or closed / timeout."""


class Stream(Protocol):
    async def utter(self, text: str, voice: VoiceSpec, on_chunk: ChunkCallback) -> Outcome: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str
    sample_rate: int

    async def start(self) -> dict[str, Any]:
        """Reach the engine; returns what it says about itself (name, models, health)."""
        ...

    async def clone_voice(self, design: str, text: str) -> str:
        """A cloned voice to speak with (made from the engine's own speech); its id."""
        ...

    async def open(self) -> Stream: ...

    async def close(self) -> None:
        """Undo what ``start`` and ``clone_voice`` did (the cloned voice is deleted)."""
        ...

    def metrics_url(self) -> str | None: ...


@dataclass
class WssOptions:
    url: str
    ca: str | None = None
    insecure: bool = False
    token: str | None = None


class WssStream:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def utter(self, text: str, voice: VoiceSpec, on_chunk: ChunkCallback) -> Outcome:
        if voice.mode == "clone":
            speech = await self.client.speak(text, voice_id=voice.voice_id)
        else:
            speech = await self.client.speak(text, design=voice.design)
        outcome = Outcome(speech.sent)
        try:
            async for chunk in speech:
                on_chunk(chunk.received, np.frombuffer(chunk.data, dtype="<i2"))
            # The Speech keeps every chunk; nobody here needs them again.
            speech.chunks.clear()
        except ServerError as exc:
            outcome.error = exc.code
        except ConnectionClosed:
            outcome.error = "closed"
        outcome.done = None if speech.done is None else speech.done.raw
        if outcome.error is None and speech.errors:
            outcome.error = speech.errors[0].code
        return outcome

    async def close(self) -> None:
        await self.client.close()


@dataclass
class WssTransport:
    options: WssOptions
    name: str = "wss"
    sample_rate: int = SAMPLE_RATE
    _voices: list[str] = field(default_factory=list)

    def _ssl(self) -> ssl_module.SSLContext | None:
        if not self.options.url.startswith("wss:"):
            return None
        return ssl_context(self.options.ca, insecure=self.options.insecure)

    def _http_base(self) -> str:
        parts = urlsplit(self.options.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, "", "", ""))

    def metrics_url(self) -> str:
        return self._http_base() + "/metrics"

    def http(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else None
        verify: Any = self._ssl() or True
        return httpx.AsyncClient(base_url=self._http_base(), verify=verify, headers=headers, timeout=30)

    async def _connect(self) -> Client:
        # The load generator bounds each utterance itself (load.py's grace), so
        # a saturated server shows as long TTFAs, not as the client's timeouts.
        return await Client.connect(self.options.url, ssl=self._ssl(), token=self.options.token, sample_rate=self.sample_rate,
                                    timeouts=UNBOUNDED_UTTERANCES)

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
        return info

    async def clone_voice(self, design: str, text: str) -> str:
        client = await self._connect()
        try:
            speech = await client.say(text, design=design)
            reply = await client.upload_voice(wav_bytes(speech.pcm(), client.sample_rate), name="bench (temporary)", ref_text=text, mime="audio/wav")
        finally:
            await client.close()
        self._voices.append(reply.id)
        return reply.id

    async def open(self) -> Stream:
        return WssStream(await self._connect())

    async def close(self) -> None:
        if not self._voices:
            return
        async with self.http() as http:
            for voice_id in self._voices:
                await http.delete(f"/v1/voices/{voice_id}")
        self._voices.clear()


def make_transport(kind: str, options: Any) -> Transport:
    """``wss`` (default), ``engine`` (no network) or ``webrtc`` (bench/rtc.py)."""
    if kind == "wss":
        return WssTransport(WssOptions(options.url, options.ca, options.insecure, options.token))
    if kind == "engine":
        from .engine_direct import EngineDirectTransport

        return EngineDirectTransport(options.engine)
    if kind == "webrtc":
        try:
            from . import rtc
        except ImportError as exc:
            raise SystemExit(f"--transport webrtc needs bench/rtc.py and aiortc: {exc}") from exc
        factory = getattr(rtc, "transport", None)
        if factory is None:
            raise SystemExit("bench/rtc.py does not provide transport(options) yet")
        return factory(options)  # type: ignore[no-any-return]
    raise SystemExit(f"unknown transport {kind!r}")


def now() -> float:
    return time.perf_counter()


async def aclose_quietly(stream: Stream | None) -> None:
    if stream is None:
        return
    try:
        await asyncio.wait_for(stream.close(), timeout=5)
    except Exception:  # a dead connection has nothing left to close
        pass
