"""One session's open utterances: ``speak``, ``text``, ``end``, ``flush``, ``cancel``.

Each utterance runs as its own task: text goes through the speech layer to
the engine, audio comes back into the session's sink. However it ends
(spoken, cancelled, failed, the client gone), ``_finish`` closes it once: the
sink is told, and the connection sends the ``done`` that ends every speak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from . import metrics
from .config import Limits
from .engines.base import Engine
from .errors import BadMessage, EngineError, LimitExceeded, MineStreamError, NothingToSay, UnknownId
from .protocol import Cancel, End, Flush, Flushed, Segment, ServerConnection, Speak, Text
from .sinks import AudioSink
from .speak_request import check_language, check_text, resolve_voice
from .speech import AudioBudget, FlushReached, SegmentBegins, SpeechEvent, Utterance, speak
from .voices import VoiceLibrary

log = logging.getLogger("minestream.session")


@dataclass
class _Running:
    utterance: Utterance
    task: asyncio.Task[None]
    flushes_at_end: int = 0


class Utterances:
    def __init__(
        self, connection: ServerConnection, engine: Engine, library: VoiceLibrary, limits: Limits, sink: AudioSink, owner: str
    ) -> None:
        self._connection = connection
        self._engine = engine
        self._library = library
        self._limits = limits
        self._budget = AudioBudget(per_char_s=limits.max_audio_s_per_char, utterance_s=limits.max_utterance_audio_s)
        self._sink = sink
        self._owner = owner
        self._open: dict[str, _Running] = {}

    def __len__(self) -> int:
        return len(self._open)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [running.task for running in self._open.values()]

    async def speak(self, message: Speak) -> None:
        started = time.monotonic()
        self._connection.open(message.id)  # raises DuplicateId: the open one goes on
        try:
            if len(self._open) >= self._limits.max_open_utterances:
                raise LimitExceeded(f"at most {self._limits.max_open_utterances} utterances may be open at once")
            check_text(message.text, self._limits, final=message.final)
            check_language(self._engine, message.language, message.text)
            voice = await resolve_voice(message.voice, self._engine, self._library)
        except MineStreamError as exc:
            self._connection.refuse(message.id, exc)
            return
        utterance = Utterance(message.id, voice, message.language, started, owner=self._owner)
        utterance.add_text(message.text)
        if message.final:
            utterance.end()
        self._sink.begin(message.id)
        task = asyncio.create_task(self._run(utterance), name=f"utterance-{message.id}")
        self._open[message.id] = _Running(utterance, task)
        metrics.UTTERANCES.labels("socket").inc()

    def text(self, message: Text) -> None:
        utterance = self._find(message.id).utterance
        if utterance.ended:
            raise BadMessage(f"utterance {message.id!r} takes no more text", id=message.id)
        check_text(message.text, self._limits, final=False, already=utterance.chars)
        utterance.add_text(message.text)

    def end(self, message: End) -> None:
        self._find(message.id).utterance.end()

    def flush(self, message: Flush) -> None:
        running = self._find(message.id)
        if not running.utterance.flush():
            running.flushes_at_end += 1  # ended: all its text is being spoken; answer just before done

    async def cancel(self, message: Cancel) -> None:
        await self._stop(self._find(message.id))

    async def close(self) -> None:
        """The session is over: stop every utterance."""
        for running in list(self._open.values()):
            await self._stop(running)

    def _find(self, utterance_id: str) -> _Running:
        running = self._open.get(utterance_id)
        if running is None:
            raise UnknownId(f"no open utterance {utterance_id!r}", id=utterance_id)
        return running

    async def _stop(self, running: _Running) -> None:
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        if running.utterance.id in self._open:
            # Cancelled before its task first ran: the body, and its finally, never did.
            self._finish(running.utterance, spoken=False, failure=None)

    async def _run(self, utterance: Utterance) -> None:
        failure: MineStreamError | None = None
        spoken = False
        try:
            async for event in speak(self._engine, utterance, self._budget):
                await self._deliver(utterance, event)
            if utterance.audio_samples == 0:
                raise NothingToSay("the engine produced no audio: is there anything speakable in the text?")
            await self._sink.end(utterance.id)
            spoken = True
        except MineStreamError as exc:
            failure = exc
        except Exception:
            log.exception("utterance %s failed", utterance.id)
            failure = EngineError("synthesis failed")
        finally:
            self._finish(utterance, spoken=spoken, failure=failure)

    def _finish(self, utterance: Utterance, *, spoken: bool, failure: MineStreamError | None) -> None:
        """However the utterance ended: tell the sink, send its error and the ``done`` it ends with."""
        running = self._open.pop(utterance.id, None)
        if not spoken:
            self._sink.discard(utterance.id)
        if failure is not None:
            self._connection.send_error(failure, id=utterance.id)
        if spoken:
            utterance.finished()
        for _ in range(running.flushes_at_end if running and spoken else 0):
            self._connection.send_about(Flushed(utterance.id))
        self._connection.send_done(
            utterance.id, cancelled=not spoken, audio_ms=utterance.audio_ms, ttfa_ms=utterance.ttfa_ms, rtf=utterance.rtf
        )
        self._log(utterance, "spoken" if spoken else failure.code if failure else "cancelled")

    async def _deliver(self, utterance: Utterance, event: SpeechEvent) -> None:
        match event:
            case SegmentBegins():
                self._connection.send_about(Segment(utterance.id, event.index, event.text, event.start, event.end, event.audio_ms))
            case FlushReached():
                await self._sink.drain(utterance.id)
                self._connection.send_about(Flushed(utterance.id))
            case _:
                await self._sink.write(utterance.id, event)

    def _log(self, utterance: Utterance, outcome: str) -> None:
        voice = "clone" if utterance.voice.reference is not None else "design"
        log.info(
            "utterance %s %s: engine=%s voice=%s chars=%d audio_ms=%d ttfa_ms=%s rtf=%s",
            utterance.id[:32], outcome, self._engine.info.name, voice, utterance.chars, utterance.audio_ms, utterance.ttfa_ms, utterance.rtf,
        )  # fmt: skip
