"""One client's session: its open utterances, its uploads, its limits.

The session is transport-agnostic. A transport (WebSocket or WebRTC data
channel) turns frames into messages with ``Protocol`` and hands them to
``Session.handle``; the session answers by putting messages in its ``outbox``,
which the transport drains. Audio leaves through an ``AudioSink``: as
``audio`` messages in the outbox by default, or on a media track for WebRTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np

from . import metrics
from .audio import StreamResampler, to_pcm_bytes
from .config import Limits
from .engines.base import SAMPLE_RATE, Engine, Voice
from .errors import (
    BadMessage,
    DuplicateId,
    EngineError,
    LimitExceeded,
    MineStreamError,
    Unauthorized,
    Unavailable,
    UnknownId,
)
from .ingest import ReferenceDecoder
from .protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    End,
    Frame,
    Hello,
    Ping,
    Protocol,
    Speak,
    Text,
    VoiceBegin,
    VoiceChunk,
    VoiceEnd,
    VoiceRef,
    error_message,
)
from .reference import prepare_reference
from .speech import Utterance, speak
from .state import ServerState

log = logging.getLogger("minestream.session")

_PROGRESS_EVERY_MS = 200


class Outbox:
    """Messages waiting for the transport, FIFO, with a soft bound for audio.

    Audio producers wait while too much is queued (a slow client slows its
    own utterances only); control messages never wait. ``discard`` drops the
    queued audio of a cancelled utterance so barge-in is immediate.
    """

    def __init__(self, high_water: int = 64) -> None:
        self._items: deque[dict[str, Any] | None] = deque()
        self._high_water = high_water
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def put(self, message: dict[str, Any] | None) -> None:
        self._items.append(message)
        self._readable.set()
        if len(self._items) >= self._high_water:
            self._writable.clear()

    async def put_audio(self, message: dict[str, Any]) -> None:
        await self._writable.wait()
        self.put(message)

    async def get(self) -> dict[str, Any] | None:
        """The next message; None means the session is over."""
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        message = self._items.popleft()
        if len(self._items) < self._high_water:
            self._writable.set()
        return message

    def discard(self, utterance_id: str) -> None:
        self._items = deque(m for m in self._items if not (m and m.get("type") == "audio" and m.get("id") == utterance_id))
        if len(self._items) < self._high_water:
            self._writable.set()


class AudioSink(TypingProtocol):
    """Where an utterance's audio goes: 24 kHz float32 in, in order."""

    async def write(self, utterance_id: str, pcm: np.ndarray) -> None: ...

    async def end(self, utterance_id: str) -> None: ...

    def discard(self, utterance_id: str) -> None: ...


class MessageAudioSink:
    """Audio as protocol ``audio`` messages, in the session's format and rate."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._streams: dict[str, tuple[StreamResampler, list[int]]] = {}

    def _stream(self, utterance_id: str) -> tuple[StreamResampler, list[int]]:
        if utterance_id not in self._streams:
            self._streams[utterance_id] = (StreamResampler(self._session.sample_rate), [0])
        return self._streams[utterance_id]

    async def write(self, utterance_id: str, pcm: np.ndarray) -> None:
        resampler, seq = self._stream(utterance_id)
        await self._send(utterance_id, resampler.process(pcm), seq)

    async def end(self, utterance_id: str) -> None:
        stream = self._streams.pop(utterance_id, None)
        if stream is not None and not stream[0].passthrough:
            await self._send(utterance_id, stream[0].process(np.zeros(0, np.float32), last=True), stream[1])

    async def _send(self, utterance_id: str, pcm: np.ndarray, seq: list[int]) -> None:
        if len(pcm) == 0:
            return
        data = to_pcm_bytes(pcm, self._session.format)
        await self._session.outbox.put_audio({"type": "audio", "id": utterance_id, "seq": seq[0], "data": data})
        seq[0] += 1

    def discard(self, utterance_id: str) -> None:
        self._streams.pop(utterance_id, None)
        self._session.outbox.discard(utterance_id)


class UploadDecoder(TypingProtocol):
    """Turns an upload into 24 kHz PCM: ``ReferenceDecoder`` for bytes, a track recorder for WebRTC."""

    @property
    def decoded_ms(self) -> int: ...

    async def feed(self, data: bytes) -> None: ...

    async def finish(self) -> np.ndarray: ...

    async def abort(self) -> None: ...


@dataclass
class Upload:
    ref: str
    name: str | None
    ref_text: str | None
    decoder: UploadDecoder
    reported_ms: int = 0


class Session:
    def __init__(self, state: ServerState, *, authorized: bool) -> None:
        self.state = state
        self.id = "s_" + secrets.token_hex(6)
        self.authorized = authorized or not state.settings.token_required
        self.protocol = Protocol(state.settings.limits.max_message_bytes)
        self.outbox = Outbox()
        self.audio: AudioSink = MessageAudioSink(self)
        self.format = "pcm_s16le"
        self.sample_rate = SAMPLE_RATE
        self.utterances: dict[str, Utterance] = {}
        self.uploads: dict[str, Upload] = {}
        self.microphone: Any = None
        """Set by the WebRTC transport: ``recording(max_seconds)`` makes an ``UploadDecoder`` fed from the
        incoming track, ``record(upload)``/``stop(upload)`` start and end feeding it."""

    @property
    def engine(self) -> Engine:
        return self.state.engine

    @property
    def limits(self) -> Limits:
        return self.state.settings.limits

    # --- frames ----------------------------------------------------------------

    async def receive(self, frame: Frame) -> MineStreamError | None:
        """Handle one frame; returns the fatal error that must end the transport, if any."""
        try:
            await self.handle(self.protocol.receive(frame))
        except MineStreamError as exc:
            self.report(exc)
            if exc.fatal:
                return exc
        except Exception:
            # A bug must cost this message, not the session.
            log.exception("session %s: unexpected error", self.id)
            self.report(MineStreamError("internal error; the server has logged it"))
        return None

    def encode(self, message: dict[str, Any]) -> Frame:
        return self.protocol.send(message)

    # --- dispatch ------------------------------------------------------------

    async def handle(self, message: ClientMessage) -> None:
        """Act on one message; a ``MineStreamError`` raised here is reported by ``report``."""
        if isinstance(message, Hello):
            self._hello(message)
        elif isinstance(message, Speak):
            await self._speak(message)
        elif isinstance(message, Text):
            self._text(message)
        elif isinstance(message, End):
            self._end(message)
        elif isinstance(message, Cancel):
            await self._cancel(message)
        elif isinstance(message, VoiceBegin):
            await self._voice_begin(message)
        elif isinstance(message, VoiceChunk):
            await self._voice_chunk(message)
        elif isinstance(message, VoiceEnd):
            await self._voice_end(message)
        elif isinstance(message, Ping):
            self.outbox.put({"type": "pong", "t": message.t})

    def report(self, exc: MineStreamError) -> None:
        metrics.ERRORS.labels(exc.code).inc()
        self.outbox.put(error_message(exc))

    def _hello(self, hello: Hello) -> None:
        if not self.authorized:
            if hello.token is None or not self.state.check_token(hello.token):
                raise Unauthorized("a valid token is required: pass it in hello.token, ?token= or a Bearer header")
            self.authorized = True
        self.format, self.sample_rate = hello.format, hello.sample_rate
        self.outbox.put(
            {
                "type": "ready",
                "protocol": PROTOCOL_VERSION,
                "session": self.id,
                "engine": {**self.engine.info.as_message(), **_engine_state(self.engine.health())},
                "format": self.format,
                "sample_rate": self.sample_rate,
                "limits": self.limits.as_message(),
            }
        )

    # --- utterances ------------------------------------------------------

    async def _speak(self, speak: Speak) -> None:
        if speak.id in self.utterances:
            raise DuplicateId(f"utterance {speak.id!r} is still open", id=speak.id)
        started = time.monotonic()
        try:
            self._check_speak(speak)
            voice = await self._resolve(speak.voice)
        except MineStreamError as exc:
            # Refused: the error, then the one done every speak ends with.
            exc.id = speak.id
            self.report(exc)
            self.outbox.put({"type": "done", "id": speak.id, "cancelled": True, "audio_ms": 0, "ttfa_ms": None, "rtf": None})
            return
        utterance = Utterance(speak.id, voice, speak.language, started)
        self.utterances[speak.id] = utterance
        utterance.add_text(speak.text)
        if speak.final:
            utterance.end()
        utterance.task = asyncio.create_task(self._run(utterance), name=f"utterance-{speak.id}")
        metrics.UTTERANCES.inc()

    def _check_speak(self, speak: Speak) -> None:
        if len(self.utterances) >= self.limits.max_open_utterances:
            raise LimitExceeded(f"at most {self.limits.max_open_utterances} utterances may be open at once")
        if len(speak.text) > self.limits.max_text_chars:
            raise LimitExceeded(f"text is longer than {self.limits.max_text_chars} characters")
        if speak.final and not speak.text.strip():
            raise BadMessage("'text' is empty")
        if not self.engine.speaks(speak.language):
            raise Unavailable(f"this engine speaks {', '.join(self.engine.info.languages)} (or 'auto'), not {speak.language!r}")

    async def _resolve(self, ref: VoiceRef) -> Voice:
        if ref.design is not None:
            if not self.engine.info.design:
                raise Unavailable("this engine cannot design voices")
            return Voice(design=ref.design)
        assert ref.voice_id is not None
        record = await self.state.library.get(ref.voice_id)
        reference = await self.state.library.reference(record)
        if reference is None:
            return Voice(design=record.design, voice_id=record.id)
        if not self.engine.info.clone:
            raise Unavailable("this engine cannot clone voices")
        return Voice(design=record.design, reference=reference, voice_id=record.id)

    def _open(self, utterance_id: str) -> Utterance:
        utterance = self.utterances.get(utterance_id)
        if utterance is None:
            raise UnknownId(f"no open utterance {utterance_id!r}", id=utterance_id)
        return utterance

    def _text(self, message: Text) -> None:
        utterance = self._open(message.id)
        if utterance.ended:
            raise BadMessage(f"utterance {message.id!r} takes no more text", id=message.id)
        if utterance.chars + len(message.text) > self.limits.max_text_chars:
            raise LimitExceeded(f"text is longer than {self.limits.max_text_chars} characters", id=message.id)
        utterance.add_text(message.text)

    def _end(self, message: End) -> None:
        self._open(message.id).end()

    async def _cancel(self, message: Cancel) -> None:
        utterance = self._open(message.id)
        await self._stop(utterance)
        self._done(utterance, cancelled=True)

    async def _stop(self, utterance: Utterance) -> None:
        self.utterances.pop(utterance.id, None)
        if utterance.task is not None and utterance.task is not asyncio.current_task():
            utterance.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await utterance.task
        self.audio.discard(utterance.id)

    async def _run(self, utterance: Utterance) -> None:
        try:
            async for chunk in speak(self.engine, utterance):
                await self.audio.write(utterance.id, chunk)
            if utterance.audio_samples == 0:
                raise EngineError("the engine produced no audio: is there anything speakable in the text?")
            await self.audio.end(utterance.id)
        except MineStreamError as exc:
            exc.id = utterance.id
            self.report(exc)
            self.utterances.pop(utterance.id, None)
            self.audio.discard(utterance.id)
            self._done(utterance, cancelled=True)
        except Exception:
            log.exception("utterance %s failed", utterance.id)
            self.report(EngineError("synthesis failed", id=utterance.id))
            self.utterances.pop(utterance.id, None)
            self.audio.discard(utterance.id)
            self._done(utterance, cancelled=True)
        else:
            self.utterances.pop(utterance.id, None)
            self._done(utterance, cancelled=False)

    def _done(self, utterance: Utterance, *, cancelled: bool) -> None:
        if utterance.rtf is not None and not cancelled:
            metrics.RTF.observe(utterance.rtf)
        self.outbox.put(
            {
                "type": "done",
                "id": utterance.id,
                "cancelled": cancelled,
                "audio_ms": utterance.audio_ms,
                "ttfa_ms": utterance.ttfa_ms,
                "rtf": utterance.rtf,
            }
        )

    # --- uploads -----------------------------------------------------------

    async def _voice_begin(self, begin: VoiceBegin) -> None:
        if begin.ref in self.uploads:
            raise DuplicateId(f"upload {begin.ref!r} is already open", ref=begin.ref)
        if len(self.uploads) >= self.limits.max_uploads:
            raise LimitExceeded(f"at most {self.limits.max_uploads} uploads may be open at once", ref=begin.ref)
        if not self.engine.info.clone:
            raise Unavailable("this engine cannot clone voices", ref=begin.ref)
        decoder: UploadDecoder
        if begin.source == "rtc":
            if self.microphone is None:
                raise BadMessage("source 'rtc' needs a WebRTC session", ref=begin.ref)
            decoder = self.microphone.recording(max_seconds=self.limits.max_ref_seconds)
        elif begin.source is not None:
            raise BadMessage(f"unknown source {begin.source[:32]!r}", ref=begin.ref)
        else:
            decoder = ReferenceDecoder(begin.mime, max_seconds=self.limits.max_ref_seconds)
        upload = Upload(begin.ref, begin.name, begin.ref_text, decoder)
        self.uploads[begin.ref] = upload
        if begin.source == "rtc":
            self.microphone.record(upload)

    def _upload(self, ref: str) -> Upload:
        upload = self.uploads.get(ref)
        if upload is None:
            raise UnknownId(f"no open upload {ref!r}", ref=ref)
        return upload

    async def _voice_chunk(self, chunk: VoiceChunk) -> None:
        upload = self._upload(chunk.ref)
        if not chunk.data:
            return  # Safari sends empty timeslices.
        await self.feed_upload(upload, chunk.data)

    async def feed_upload(self, upload: Upload, data: bytes) -> None:
        try:
            await upload.decoder.feed(data)
        except MineStreamError as exc:
            await self._abandon(upload)
            exc.ref = upload.ref
            raise
        decoded = upload.decoder.decoded_ms
        if decoded - upload.reported_ms >= _PROGRESS_EVERY_MS:
            upload.reported_ms = decoded
            self.outbox.put({"type": "progress", "ref": upload.ref, "decoded_ms": decoded})

    async def _voice_end(self, end: VoiceEnd) -> None:
        upload = self._upload(end.ref)
        if self.microphone is not None:
            await self.microphone.stop(upload)
        self.uploads.pop(end.ref, None)
        began = time.monotonic()
        try:
            pcm = await upload.decoder.finish()
            audio = await asyncio.to_thread(prepare_reference, pcm, max_seconds=self.limits.max_ref_seconds)
        except MineStreamError as exc:
            exc.ref = end.ref
            raise
        finally:
            await upload.decoder.abort()
        metrics.DECODE_SECONDS.observe(time.monotonic() - began)
        record = await self.state.library.save(name=upload.name or "", kind="clone", audio=audio, ref_text=upload.ref_text)
        self.outbox.put({"type": "voice", "ref": end.ref, "voice_id": record.id, "name": record.name, "duration_ms": record.duration_ms})

    async def _abandon(self, upload: Upload) -> None:
        self.uploads.pop(upload.ref, None)
        if self.microphone is not None:
            await self.microphone.stop(upload)
        await upload.decoder.abort()

    # --- teardown ------------------------------------------------------------

    async def close(self) -> None:
        """The transport is gone: stop every utterance and upload, free everything."""
        for utterance in list(self.utterances.values()):
            await self._stop(utterance)
        for upload in list(self.uploads.values()):
            await self._abandon(upload)
        self.outbox.put(None)


def _engine_state(health: dict[str, Any]) -> dict[str, Any]:
    """What ``ready`` says of the engine's health: its state, and its decode rows where it has them."""
    rows = health.get("rows")
    return {"state": health.get("state", "ready"), **({"rows": rows} if rows else {})}
