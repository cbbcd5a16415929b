"""MineStream as a LiveKit Agents TTS plugin.

    from client.integrations import livekit as minestream

    session = AgentSession(
        tts=minestream.TTS(url="wss://tts.example:8443/v1/stream", token=TOKEN, ca="certs/ca.pem",
                           design="a warm narrator"),     # or voice_id="v_…", a saved voice
        use_tts_aligned_transcript=True,                  # transcripts timed by MineStream's sentences
        …
    )

``synthesize(text)`` is one utterance spoken whole (a ``ChunkedStream``);
``stream()`` is one utterance whose text arrives as the LLM writes it: each
``push_text`` goes to the server as it comes (``speak`` with ``final: false``,
then ``text``), ``flush()`` has the text so far spoken now (protocol
``flush``), ``end_input()`` ends it (``end``). The server cuts the text into
sentences, so no tokenizer runs here. Audio goes through the framework's
``AudioEmitter`` as it arrives; before each piece's audio a ``TimedString``
carries the piece's text and where its audio starts, so the capability
``aligned_transcript`` is declared: the timing is exact per sentence (or part
of a long one), not per word. Closing a stream (an interruption) cancels its
utterance on the server.

Utterances share pooled sessions (``SessionPool``): after the first, an
utterance costs no handshake.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from livekit.agents import tts
from livekit.agents._exceptions import APIConnectionError, APIError, APIStatusError, APITimeoutError
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, TimedString

from ..connection import Client
from ..errors import ConnectError, Disconnected, MineStreamError, ServerError, Timeout, Unauthorized
from ..messages import AudioChunk, Segment
from ..speech import Speech
from ..timeouts import Timeouts
from ..tls import ssl_context
from .pool import SessionPool

DEFAULT_DESIGN = "a clear, neutral voice"


@dataclass(frozen=True)
class Options:
    """The voice and language of the utterances to come (``TTS.update_options``)."""

    voice_id: str | None = None
    """A saved voice (``minestream voices``); wins over ``design``."""
    design: str = DEFAULT_DESIGN
    language: str = "auto"

    def speak_options(self) -> dict[str, Any]:
        voice: dict[str, Any] = {"voice_id": self.voice_id} if self.voice_id else {"design": self.design}
        return {**voice, "language": self.language}


class TTS(tts.TTS):
    """A LiveKit ``tts.TTS`` over MineStream's protocol v1: streaming, with sentence-aligned transcripts."""

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        ca: str | Path | None = None,
        ssl: ssl_module.SSLContext | None = None,
        insecure: bool = False,
        voice_id: str | None = None,
        design: str = DEFAULT_DESIGN,
        language: str = "auto",
        sample_rate: int = 24000,
        timeouts: Timeouts | None = None,
    ) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True), sample_rate=sample_rate, num_channels=1)
        self._options = Options(voice_id, design, language)
        context = ssl if ssl is not None else ssl_context(ca, insecure=insecure) if url.startswith("wss:") else None
        self._pool = SessionPool(lambda: _connect(url, token, context, sample_rate, timeouts))
        self._prewarming: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return "minestream"

    @property
    def provider(self) -> str:
        return "MineStream"

    @property
    def pool(self) -> SessionPool:
        """The sessions this TTS speaks on."""
        return self._pool

    @property
    def options(self) -> Options:
        return self._options

    def update_options(self, *, voice_id: str | None = None, design: str | None = None, language: str | None = None) -> None:
        """For utterances started from now on (one utterance keeps one voice). A ``design`` alone replaces a saved voice."""
        options = self._options
        if design is not None:
            options = replace(options, design=design, voice_id=None)
        if voice_id is not None:
            options = replace(options, voice_id=voice_id)
        if language is not None:
            options = replace(options, language=language)
        self._options = options

    def synthesize(self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)

    def prewarm(self) -> None:
        if self._prewarming is None:
            self._prewarming = asyncio.create_task(self._prewarm())

    async def _prewarm(self) -> None:
        try:
            await self._pool.prewarm()
        except MineStreamError:
            pass  # the first utterance reconnects and reports it

    async def aclose(self) -> None:
        if self._prewarming is not None:
            self._prewarming.cancel()
            await asyncio.gather(self._prewarming, return_exceptions=True)
        await self._pool.aclose()


async def _connect(url: str, token: str | None, context: ssl_module.SSLContext | None, sample_rate: int, timeouts: Timeouts | None) -> Client:
    return await Client.connect(url, token=token, ssl=context, sample_rate=sample_rate, segments=True, timeouts=timeouts)


class ChunkedStream(tts.ChunkedStream):
    """One utterance spoken whole."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        self._minestream = tts
        self.speech: Speech | None = None
        """The MineStream utterance of the latest attempt (its ``done`` has the server's TTFA and RTF)."""
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        utterance_id = _new_id()
        output_emitter.initialize(request_id=utterance_id, sample_rate=self._minestream.sample_rate, num_channels=1, mime_type="audio/pcm")
        self.speech = await _speak(self._minestream, self._input_text, utterance_id, final=True, timeout=self._conn_options.timeout)
        await _emit(self.speech, output_emitter, lambda: self._input_text)
        output_emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """One utterance whose text streams in: ``push_text`` as tokens come, ``flush``, ``end_input``."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        self._minestream = tts
        self.speech: Speech | None = None
        """The MineStream utterance of the latest attempt (its ``done`` has the server's TTFA and RTF)."""
        self._sent = ""
        """The utterance's text as sent, which the segments' offsets index."""
        super().__init__(tts=tts, conn_options=conn_options)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        self._sent = ""
        utterance_id = _new_id()
        output_emitter.initialize(request_id=utterance_id, sample_rate=self._minestream.sample_rate, num_channels=1,
                                  mime_type="audio/pcm", stream=True)  # fmt: skip
        opened: asyncio.Future[Speech | None] = asyncio.get_running_loop().create_future()
        sending = asyncio.create_task(self._send_text(output_emitter, utterance_id, opened), name="minestream-livekit-text")
        try:
            speech = await asyncio.shield(opened)
            if speech is not None:
                await _emit(speech, output_emitter, lambda: self._sent)
                output_emitter.end_segment()
            await sending  # its errors
        finally:
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)

    async def _send_text(self, output_emitter: tts.AudioEmitter, utterance_id: str, opened: asyncio.Future[Speech | None]) -> None:
        speech: Speech | None = None
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    if speech is not None:
                        # Not Speech.flush(): the audio keeps flowing through _emit meanwhile.
                        await _translate(speech.client.send({"type": "flush", "id": speech.id}))
                    continue
                if speech is None:
                    self._mark_started()
                    speech = self.speech = await _speak(self._minestream, item, utterance_id, final=False, timeout=self._conn_options.timeout)
                    output_emitter.start_segment(segment_id=utterance_id)
                    opened.set_result(speech)
                else:
                    await _translate(speech.send(item))
                self._sent += item
            if speech is not None:
                await _translate(speech.end())
            elif not opened.done():
                opened.set_result(None)
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc if isinstance(exc, Exception) else APIError("the text stream was stopped", retryable=False))
            raise


async def _speak(owner: TTS, text: str, utterance_id: str, *, final: bool, timeout: float) -> Speech:
    """Open the utterance on a pooled session (``timeout``: for a session to be ready)."""
    opening = owner.pool.speak(text, id=utterance_id, final=final, **owner.options.speak_options())
    _, speech = await _translate(asyncio.wait_for(opening, timeout))
    return speech


def _new_id() -> str:
    """The utterance's id: also the emitter's request id and segment id."""
    return f"lk_{uuid.uuid4().hex[:16]}"


async def _emit(speech: Speech, output_emitter: tts.AudioEmitter, sent: Any) -> None:
    """The utterance's audio into the emitter, each piece's timed text before its audio; cancels it if stopped."""
    heard_to = 0  # the text up to here has been given a time
    try:
        async for event in speech.events():
            if isinstance(event, AudioChunk):
                output_emitter.push(event.data)
            elif isinstance(event, Segment):
                # The delta runs from the end of the last piece, so the space between pieces is kept.
                text: str = sent()
                output_emitter.push_timed_transcript(TimedString(text[heard_to : event.text_end], start_time=event.audio_ms / 1000))
                heard_to = event.text_end
    except MineStreamError as exc:
        raise _api_error(exc) from exc
    except asyncio.TimeoutError as exc:
        raise APITimeoutError(str(exc)) from exc
    finally:
        if speech.done is None:
            # Stopped before done (an interruption closed the stream): the server stops at once.
            speech.cancel_soon()


async def _translate(awaitable: Any) -> Any:
    try:
        return await awaitable
    except MineStreamError as exc:
        raise _api_error(exc) from exc
    except asyncio.TimeoutError as exc:
        raise APITimeoutError("MineStream did not answer in time") from exc


def _api_error(exc: MineStreamError) -> APIError:
    """The framework's error for this client's: it decides from it whether to retry."""
    if isinstance(exc, Timeout):
        return APITimeoutError(f"MineStream: {exc}")
    if isinstance(exc, ConnectError | Disconnected):
        return APIConnectionError(f"MineStream: {exc}")
    if isinstance(exc, Unauthorized):
        return APIStatusError(f"MineStream: {exc}", status_code=401, body=exc.raw)
    if isinstance(exc, ServerError):
        # The server's refusals (bad text, unknown voice, limits) do not change on a retry; its failures may.
        return APIError(f"MineStream: {exc}", body=exc.raw, retryable=exc.code in ("engine_error", "internal"))
    return APIError(f"MineStream: {exc}", retryable=False)
