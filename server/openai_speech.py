"""``POST /v1/audio/speech`` as OpenAI documents it, so its SDKs and the agent frameworks work unchanged.

The body is OpenAI's: ``model`` (any name; MineStream speaks with its own
engine), ``input``, ``voice``, ``instructions``, ``response_format`` (mp3 when
omitted, opus, aac, flac, wav, pcm: all 24 kHz mono), ``speed`` (0.25-4) and
``stream_format`` (``audio``, or ``sse`` for ``speech.audio.delta`` /
``speech.audio.done`` events); plus ``language``, MineStream's own.

``voice`` is a saved voice's name or id, ``{"id": <saved voice id>}``, or one
of OpenAI's stock names, each a designed voice (``STOCK_VOICES``).
``instructions`` describe the voice: alone they design one, with a stock
name they refine its description; a saved voice keeps the timbre it was
saved with, so instructions with one are refused.

The request passes the socket's checks (``speak_request``) and the engine
must have made its first audio before the response starts: a request that
cannot be spoken is a 4xx, never a 200 with no audio. The audio then streams
as it is made: the engine's chunks are time-stretched (``speed``) and encoded
on the response's own thread (``EncodingStream``), each piece sent as it
comes. Errors are OpenAI's shape, ``{"error": {message, type, param, code}}``,
with ``code`` this server's protocol code.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import metrics
from .audio import SAMPLE_RATE
from .auth import require_token
from .config import Limits
from .encoders import FORMATS
from .encoding import EncodingStream
from .errors import BadMessage, EngineError, LimitExceeded, MineStreamError, NothingToSay, TooLarge, Unavailable, VoiceNotFound
from .http_api import json_body
from .protocol import VoiceRef
from .speak_request import check_language, check_text, resolve_voice
from .speech import Utterance, speak_audio
from .state import ServerState
from .stretch import MAX_SPEED, MIN_SPEED
from .voices import VoiceLibrary

log = logging.getLogger("minestream.openai")

DEFAULT_FORMAT = "mp3"
STREAM_FORMATS = ("audio", "sse")
MAX_INSTRUCTIONS_CHARS = 2000
FRAME_MS = 80
"""``usage.output_tokens`` counts audio in 80 ms frames (Qwen3-TTS-12Hz's codec frame, 12.5 a second)."""

STOCK_VOICES = {
    "alloy": "A neutral, balanced, clear voice.",
    "ash": "A warm, confident male voice.",
    "ballad": "A soft, gentle, expressive voice.",
    "coral": "A bright, cheerful female voice.",
    "echo": "A deep, calm male voice.",
    "fable": "A warm, expressive storyteller.",
    "nova": "A bright, energetic young female voice.",
    "onyx": "A very deep, authoritative male voice.",
    "sage": "A calm, measured, wise voice.",
    "shimmer": "A soft, gentle female voice.",
    "verse": "A lively, expressive voice.",
    "marin": "A natural, warm, conversational female voice.",
    "cedar": "A natural, steady, low male voice.",
}
"""OpenAI's stock voices (all thirteen its SDK names), each a voice design."""


class InvalidParam(BadMessage):
    """A body field OpenAI's SDKs can point at (``error.param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class UnknownVoice(VoiceNotFound):
    param = "voice"


@dataclass(frozen=True)
class SpeechParams:
    text: str
    voice: object
    instructions: str | None
    response_format: str
    speed: float
    stream_format: str
    language: str
    model: str | None

    @property
    def sse(self) -> bool:
        return self.stream_format == "sse"


# --- the route ---------------------------------------------------------------------


async def speech(request: Request) -> Response:
    try:
        return await _speech(request)
    except MineStreamError as exc:
        return error_response(exc)


def error_response(exc: MineStreamError) -> JSONResponse:
    """OpenAI's error shape; ``code`` stays the protocol's, so both kinds of client can read it."""
    # A body refused mid-stream is still coming: close the connection rather than read the rest.
    headers = {"Connection": "close"} if isinstance(exc, TooLarge) else None
    return JSONResponse({"error": error_body(exc)}, status_code=exc.http_status, headers=headers)


def error_body(exc: MineStreamError) -> dict[str, Any]:
    kind = "invalid_request_error" if exc.http_status < 500 else "server_error"
    return {"message": exc.message, "type": kind, "param": getattr(exc, "param", None), "code": exc.code}


async def _speech(request: Request) -> Response:
    require_token(request)
    state: ServerState = request.app.state.minestream
    if state.draining:
        raise Unavailable("the server is shutting down; try again shortly")
    params = parse_params(await json_body(request), state.settings.limits)
    check_language(state.engine, params.language, params.text)
    ref = await voice_ref(state.library, params.voice, params.instructions)
    voice = await resolve_voice(ref, state.engine, state.library)
    utterance = Utterance("http", voice, params.language, owner=f"http-{id(request)}", path="http")
    metrics.UTTERANCES.labels("http").inc()
    utterance.add_text(params.text)
    utterance.end()
    stream = SpeechStream(
        speak_audio(state.engine, utterance, state.audio_budget), EncodingStream(params.response_format, speed=params.speed), _streams(request, state), utterance.finished
    )
    try:
        await stream.start()
    except BaseException:
        await stream.close()
        raise
    # OpenAI's SDKs (and LiveKit's logs) read x-request-id.
    headers = {"X-Sample-Rate": str(SAMPLE_RATE), "Cache-Control": "no-cache", "X-Request-Id": "req_" + secrets.token_hex(12)}
    if params.sse:
        return _SpeechResponse(stream, _sse(stream, len(params.text)), media_type="text/event-stream", headers=headers)
    return _SpeechResponse(stream, _raw(stream), media_type=stream.content_type, headers=headers)


# --- the request -----------------------------------------------------------------------


def parse_params(data: dict[str, Any], limits: Limits) -> SpeechParams:
    """The body's fields, checked; the text passes the socket's check (length, something speakable)."""
    text = data.get("input")
    if not isinstance(text, str):
        raise InvalidParam("input", "'input' (the text to speak) is required and must be a string")
    check_text(text, limits)
    return SpeechParams(
        text=text,
        voice=data.get("voice"),
        instructions=_instructions(data.get("instructions")),
        response_format=_choice(data, "response_format", FORMATS, DEFAULT_FORMAT),
        speed=_speed(data.get("speed", 1.0)),
        stream_format=_choice(data, "stream_format", STREAM_FORMATS, "audio"),
        language=_string(data, "language", 32) or "auto",
        model=_string(data, "model", 200),
    )


def _string(data: dict[str, Any], key: str, max_len: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidParam(key, f"'{key}' must be a string of at most {max_len} characters")
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = data.get(key)
    if value is None:
        return default
    if value not in allowed:
        raise InvalidParam(key, f"'{key}' must be one of {', '.join(allowed)}")
    return str(value)


def _speed(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParam("speed", "'speed' must be a number")
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise InvalidParam("speed", f"'speed' must be between {MIN_SPEED} and {MAX_SPEED}, not {value}")
    return float(value)


def _instructions(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParam("instructions", "'instructions' must be a string")
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise InvalidParam("instructions", f"'instructions' is longer than {MAX_INSTRUCTIONS_CHARS} characters")
    return value.strip() or None


async def voice_ref(library: VoiceLibrary, voice: object, instructions: str | None) -> VoiceRef:
    """OpenAI's ``voice`` and ``instructions`` as the protocol's voice: a design, or a saved voice."""
    if voice is None or voice == "":
        if instructions is None:
            raise InvalidParam(
                "voice",
                "'voice' is required: a stock name (" + ", ".join(STOCK_VOICES) + "), a saved voice's name or id, "
                "or {\"id\": ...}; or describe a voice in 'instructions'",
            )
        return VoiceRef(design=instructions)
    if isinstance(voice, dict):
        voice_id = voice.get("id")
        if not isinstance(voice_id, str) or not voice_id:
            raise InvalidParam("voice", "'voice' as an object is {\"id\": \"<a saved voice's id>\"}")
        try:
            saved_id = (await library.get(voice_id)).id
        except VoiceNotFound as exc:
            raise UnknownVoice(exc.message) from None
    elif isinstance(voice, str):
        found = await _saved(library, voice)
        if found is None:
            stock = STOCK_VOICES.get(voice.lower())
            if stock is None:
                raise UnknownVoice(f"no saved voice and no stock voice is named {voice[:64]!r}; stock voices: {', '.join(STOCK_VOICES)}")
            return VoiceRef(design=stock if instructions is None else f"{stock} {instructions}")
        saved_id = found
    else:
        raise InvalidParam("voice", "'voice' must be a name or {\"id\": ...}")
    if instructions is not None:
        raise InvalidParam(
            "instructions",
            "a saved voice keeps the timbre it was saved with: 'instructions' refine only a stock voice, "
            "or design a voice when no 'voice' is given",
        )
    return VoiceRef(voice_id=saved_id)


async def _saved(library: VoiceLibrary, name: str) -> str | None:
    """The id of the saved voice whose id or name is ``name``."""
    for record in await library.all():
        if name in (record.id, record.name):
            return record.id
    return None


# --- the response ------------------------------------------------------------------------


class _Streams:
    """How many speech responses are streaming: at most the server's session limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


def _streams(request: Request, state: ServerState) -> _Streams:
    streams: _Streams | None = getattr(request.app.state, "openai_speech_streams", None)
    if streams is None:
        streams = _Streams(state.settings.limits.max_sessions)
        request.app.state.openai_speech_streams = streams
    return streams


class SpeechStream:
    """One response's audio: the engine's chunks through the encoder; ``close`` frees all of it, once."""

    def __init__(self, audio: AsyncIterator[np.ndarray], encoding: EncodingStream, streams: _Streams, finished: Callable[[], None]) -> None:
        self._audio = audio
        self._finished = finished
        self._encoding = encoding
        self._streams = streams
        self._counted = False
        self._first: np.ndarray | None = None

    @property
    def content_type(self) -> str:
        return self._encoding.content_type

    @property
    def samples(self) -> int:
        """Audio sent, in 24 kHz samples (after the stretch)."""
        return self._encoding.samples

    async def start(self) -> None:
        """Takes a slot and waits for the engine's first audio: a request that makes none fails as a whole."""
        streams = self._streams
        if streams.open >= streams.limit:
            raise LimitExceeded(f"the server is streaming its limit of {streams.limit} speech responses; try again soon")
        streams.open += 1
        self._counted = True
        try:
            self._first = await anext(self._audio)
        except StopAsyncIteration:
            raise NothingToSay("the engine made no audio: is there anything speakable in the input?") from None
        except MineStreamError:
            raise
        except Exception as exc:
            log.exception("speech failed before its first audio")
            raise EngineError("synthesis failed") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The encoded audio, piece by piece as it is made, ending with the encoder's tail."""
        assert self._first is not None, "start() comes first"
        try:
            data = await self._encoding.encode(self._first)
            if data:
                yield data
            async for chunk in self._audio:
                data = await self._encoding.encode(chunk)
                if data:
                    yield data
            tail = await self._encoding.finish()
            if tail:
                yield tail
            self._finished()
        finally:
            await self.close()

    async def close(self) -> None:
        self._encoding.close()
        if self._counted:
            self._streams.open -= 1
            self._counted = False
        await self._audio.aclose()  # type: ignore[attr-defined]  # stops the engine's work


class _SpeechResponse(StreamingResponse):
    """A streamed response that frees its stream however it ends (done, failed, the client gone)."""

    def __init__(self, stream: SpeechStream, content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close()


async def _raw(stream: SpeechStream) -> AsyncIterator[bytes]:
    try:
        async for data in stream.chunks():
            yield data
    except MineStreamError as exc:
        # The status has gone: the body ends short (no last chunk), which clients see as an error.
        log.warning("speech stream failed after it started: %s (%s)", exc.message, exc.code)
        raise


async def _sse(stream: SpeechStream, input_chars: int) -> AsyncIterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` for each piece, then ``speech.audio.done`` with usage."""
    try:
        async for data in stream.chunks():
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    except MineStreamError as exc:
        log.warning("speech stream failed after it started: %s (%s)", exc.message, exc.code)
        yield _event({"type": "error", "error": error_body(exc)})
        return
    frames = math.ceil(stream.samples * 1000 / SAMPLE_RATE / FRAME_MS)
    usage = {"input_tokens": input_chars, "output_tokens": frames, "total_tokens": input_chars + frames}
    yield _event({"type": "speech.audio.done", "usage": usage})


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
