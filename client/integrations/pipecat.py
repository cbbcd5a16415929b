"""MineStream as a Pipecat TTS service: a ``WebsocketTTSService`` over protocol v1.

    from client.integrations.pipecat import MineStreamTTSService

    tts = MineStreamTTSService(
        url="wss://tts.example:8443/v1/stream", token=TOKEN, ca="certs/ca.pem",
        settings=MineStreamTTSService.Settings(design="a warm narrator"),   # or voice="v_…", a saved voice
    )
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, transport.output(), …])

One socket per service; each Pipecat audio context is one utterance whose id
is the context id. Its first text opens it (``speak`` with ``final: false``),
later text of the same turn follows as ``text`` messages, and the end of the
turn sends ``end``; the server cuts the text into sentences itself, so the
service defaults to streaming tokens (``TextAggregationMode.TOKEN``) and the
first sentence is spoken as soon as it is complete. An interruption cancels
(``cancel {id}``): the server stops generating at once and drops that id's
queued audio, and whatever still arrives for it is dropped here. ``done``
ends the audio context (``TTSStoppedFrame``).

Sentence timing: the session asks for ``segment`` messages, and each one
goes to Pipecat's word-timestamp hook as (the piece's text, where its audio
starts), so ``TTSTextFrame``\\ s come out as each sentence is heard. MineStream
times sentences, not words: each frame is one sentence (or part of a long one).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven
from websockets.protocol import State

from .. import wire
from ..errors import ServerError
from ..messages import Done, Ready, Segment
from ..tls import ssl_context

DEFAULT_DESIGN = "a clear, neutral voice"
SERVER_RATES = (16000, 22050, 24000, 44100, 48000)
"""Rates the server sends; any other pipeline rate is resampled here from 24 kHz."""


@dataclass
class MineStreamTTSSettings(TTSSettings):
    """Runtime-updatable settings (``TTSUpdateSettingsFrame(delta=MineStreamTTSService.Settings(...))``).

    Parameters:
        voice: A saved voice's id (``minestream voices``): designed or cloned. Wins over ``design``.
        design: A description to design the voice from ("a deep, calm pirate voice").
        language: ``None`` lets the engine detect it; else a code the engine speaks ("en", "de"...).
    """

    design: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class MineStreamTTSService(WebsocketTTSService):
    """Pipecat TTS over one MineStream protocol-v1 session; one utterance per audio context.

    Event handlers, besides ``TTSService``'s:
        on_utterance_done: ``(tts, done: client.Done)`` for each utterance the server finished:
            ``done.id`` is the context id; ``cancelled``, and the server's ``ttfa_ms``, ``rtf``, ``audio_ms``.
    """

    Settings = MineStreamTTSSettings
    _settings: MineStreamTTSSettings

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        ca: str | Path | None = None,
        ssl: ssl_module.SSLContext | None = None,
        insecure: bool = False,
        settings: MineStreamTTSSettings | None = None,
        text_aggregation_mode: TextAggregationMode | None = None,
        sample_rate: int | None = None,
        connect_timeout: float = 10.0,
        keepalive_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        """Args:
        url: The server's socket, ``wss://HOST:8443/v1/stream``.
        token: The server's token (sent as ``Authorization: Bearer``), when it needs one.
        ca: A PEM file to trust on top of the system's CAs (the server's ``certs/ca.pem``).
        ssl: A TLS context to use instead of ``ca``/``insecure``.
        insecure: Do not verify the certificate (a LAN test only).
        settings: Voice (``voice`` or ``design``) and ``language``.
        text_aggregation_mode: ``TOKEN`` (default: the server finds sentences) or ``SENTENCE``.
        sample_rate: Output rate; default the pipeline's.
        connect_timeout: Seconds for the socket, TLS and ``ready``.
        keepalive_s: A ``ping`` this often keeps the session open between turns.
        """
        store = MineStreamTTSSettings(model=None, voice=None, language=None, design=DEFAULT_DESIGN)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode or TextAggregationMode.TOKEN,
            push_text_frames=False,  # TTSTextFrames come from the segments, as they are heard
            push_start_frame=True,
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._url = url
        self._token = token
        self._ssl = ssl if ssl is not None else ssl_context(ca, insecure=insecure) if url.startswith("wss:") else None
        self._connect_timeout = connect_timeout
        self._keepalive_s = keepalive_s
        self._receive_task: asyncio.Task[None] | None = None
        self.ready: Ready | None = None
        """The server's ``ready`` for the current session (engine, limits)."""
        self._open: set[str] = set()
        """Utterances spoken on the server and not yet ``done``."""
        self._ended: set[str] = set()
        """Of those, the ones that got their ``end``."""
        self._server_rate = 24000
        self._resamplers: dict[str, BaseAudioResampler] = {}
        self._register_event_handler("on_utterance_done")

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return str(language.value if isinstance(language, Language) else language)

    # --- connection ------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # pipecat's own signature
        await super().setup(setup)
        self._server_rate = self.sample_rate if self.sample_rate in SERVER_RATES else 24000
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket and not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))
        self._create_keepalive_task(self._keepalive_s)

    async def _disconnect(self) -> None:
        await super()._disconnect()
        await self._cancel_keepalive_task()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        try:
            if self._websocket and self._websocket.state is State.OPEN:
                return
            self._websocket = await asyncio.wait_for(self._open_session(), self._connect_timeout)
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self.push_error(error_msg=f"MineStream: cannot start a session at {self._url}: {e}", exception=e)
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _open_session(self) -> Any:
        """The socket, once the server has answered ``hello`` with ``ready``."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        ws = await self._websocket_connect(self._url, ssl=self._ssl, additional_headers=headers, max_size=None, compression=None)
        try:
            hello = {"type": "hello", "protocol": 1, "format": "pcm_s16le", "sample_rate": self._server_rate, "segments": True}
            await ws.send(wire.encode(hello, binary=True))
            answer = wire.decode(await ws.recv()) or {}
            if answer.get("type") != "ready":
                raise ServerError.from_message(answer if answer.get("type") == "error" else {"code": "internal", "message": f"expected ready, got {answer.get('type')!r}"})
        except BaseException:
            await ws.close()
            raise
        self.ready = Ready.parse(answer)
        # Whatever was open belonged to the old session; the server has forgotten it.
        self._open.clear()
        self._ended.clear()
        self._resamplers.clear()
        return ws

    async def _disconnect_websocket(self) -> None:
        try:
            await self.stop_all_metrics()
            if self._websocket:
                await self._websocket.close()
        except Exception as e:
            await self.push_error(error_msg=f"MineStream: closing the session: {e}", exception=e)
        finally:
            self._websocket = None
            await self._call_event_handler("on_disconnected")

    async def _send_keepalive(self) -> None:
        await self._send({"type": "ping"})

    async def _send(self, message: dict[str, Any]) -> None:
        if self._websocket is None:
            raise ConnectionError("MineStream: not connected")
        await self._websocket.send(wire.encode(message, binary=True))

    # --- text in -----------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send text for ``context_id``'s utterance: its ``speak`` the first time, ``text`` after."""
        if not self._is_streaming_tokens and text and not text[-1].isspace():
            text += " "  # sentences arrive without the space between them; the server needs it to see one end
        try:
            if not self._websocket or self._websocket.state is State.CLOSED:
                await self._connect()
            if context_id in self._ended:
                logger.warning(f"{self}: context {context_id} already ended; not speaking [{text}]")
            elif context_id in self._open:
                await self._send({"type": "text", "id": context_id, "text": text})
            else:
                await self._send(self._speak(context_id, text))
                self._open.add(context_id)
                await self.start_tts_usage_metrics(text)
        except Exception as e:
            yield ErrorFrame(error=f"MineStream: sending text failed: {e}")
            yield TTSStoppedFrame(context_id=context_id)
            return
        yield None  # the audio comes through the receive task

    def _speak(self, context_id: str, text: str) -> dict[str, Any]:
        voice = {"voice_id": self._settings.voice} if self._settings.voice else {"design": self._settings.design or DEFAULT_DESIGN}
        return {"type": "speak", "id": context_id, "text": text, "voice": voice, "language": self._settings.language or "auto", "final": False}

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is all sent: ``end`` its utterance, so the server speaks the rest and finishes."""
        flush_id = context_id or self.get_active_audio_context_id()
        if flush_id in self._open and flush_id not in self._ended and self._websocket:
            await self._send({"type": "end", "id": flush_id})
            self._ended.add(flush_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: the server stops the utterance and drops its queued audio."""
        await self.stop_all_metrics()
        if context_id in self._open and self._websocket:
            await self._send({"type": "cancel", "id": context_id})
        await super().on_audio_context_interrupted(context_id)

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]  # as TTSService's
        """A new voice or language applies from the next utterance: the turn's rest opens one."""
        changed = await super()._update_settings(delta)
        if changed.keys() & {"voice", "design", "language"} and self._turn_context_id:
            await self._push_sequencer_frames(
                await self._aggregated_frame_sequencer.finalize(self._turn_context_id), self._turn_context_id
            )
            await self.flush_audio(context_id=self._turn_context_id)
            self._turn_context_id = None
            self._turn_context_id = self.create_context_id()
        return changed

    # --- audio out ---------------------------------------------------------------

    async def _receive_messages(self) -> None:
        async for frame in self._websocket:  # type: ignore[union-attr]
            message = wire.decode(frame)
            if message is not None:
                await self._on_message(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind, context_id = message.get("type"), message.get("id")
        if kind == "pong":
            return
        if not isinstance(context_id, str):
            if kind == "error":
                await self.push_error(error_msg=f"MineStream: {message.get('code')}: {message.get('message')}")
            return
        if kind == "done":
            self._open.discard(context_id)
            self._ended.discard(context_id)
            self._resamplers.pop(context_id, None)
            await self._call_event_handler("on_utterance_done", Done.parse(message))
        if not self.audio_context_available(context_id):
            return  # interrupted, or already over: what still comes for it is not heard
        if kind == "audio":
            await self._on_audio(context_id, bytes(message.get("data") or b""))
        elif kind == "segment":
            segment = Segment.parse(message)
            await self.add_word_timestamps([(segment.text, segment.audio_ms / 1000)], context_id)
        elif kind == "done":
            await self.stop_ttfb_metrics()
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)
        elif kind == "error":
            await self.push_error(error_msg=f"MineStream: {message.get('code')}: {message.get('message')} (utterance {context_id})")

    async def _on_audio(self, context_id: str, pcm: bytes) -> None:
        if self._server_rate != self.sample_rate:
            resampler = self._resamplers.setdefault(context_id, create_stream_resampler())
            pcm = await resampler.resample(pcm, self._server_rate, self.sample_rate)
        if pcm:
            await self.append_to_audio_context(context_id, TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=context_id))
