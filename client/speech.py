"""One utterance as the client sees it: its audio as it arrives, then its ``done``.

The client's reader hands a ``Speech`` every message that carries its ``id``;
iterating the ``Speech`` yields the audio chunks and ends at ``done``;
``events()`` yields, in the order they came, the audio chunks, the
``Segment``s (which text the audio after it speaks, for a client connected
with ``segments=True``) and the ``Flushed`` answers. Each message type has its
handler in ``_HANDLERS``; a type this client does not know (a newer server's)
is ignored, so additions to v1 need a handler here and nothing else.

``flush()`` asks the server to speak the text sent so far now, sentence end
or not, and returns once the server says all of its audio has been sent: the
reader settles it as the ``flushed`` message arrives, so it returns whether
or not anyone is iterating at that moment (the audio is then in this
``Speech``'s queue, ahead of what follows).

Waiting is bounded once the text is complete: ``Timeouts.first_audio`` from
then to the first audio (or ``done``), ``Timeouts.idle`` between messages
after that. A ``final=False`` utterance whose text is still coming waits
without a limit, since the caller decides when more text comes. A
``flush()`` waits at most ``Timeouts.first_audio`` after the utterance's last
message for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .errors import ServerError, Timeout
from .messages import AudioChunk, Done, Flushed, Segment
from .wav import wav_bytes

if TYPE_CHECKING:
    from .connection import Client

SpeechEvent = Union[AudioChunk, Segment, Flushed]
"""What ``Speech.events()`` yields."""


class Speech:
    """Iterate for ``AudioChunk``s; afterwards ``done`` holds the server's ``Done``."""

    def __init__(self, client: Client, utterance_id: str, sent: float, *, final: bool) -> None:
        self.id = utterance_id
        self.sent = sent
        """``time.perf_counter()`` when ``speak`` was sent."""
        self.first_audio: float | None = None
        self.chunks: list[AudioChunk] = []
        self.done: Done | None = None
        self.errors: list[ServerError] = []
        """Errors the server sent for this utterance, in order (a refused ``text`` leaves it open)."""
        self.segments: list[Segment] = []
        """The ``segment`` messages iterated so far (only for a client connected with ``segments=True``)."""
        self._client = client
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._deadline: float | None = None
        self._flushes: list[asyncio.Future[bool]] = []
        """Unanswered ``flush()`` calls, oldest first: the server answers them in order."""
        self._last_message = time.monotonic()
        self._over = False
        """``done`` (or the socket's end) has arrived, iterated or not."""
        """A message for this utterance has arrived."""
        if final:
            self._text_complete()

    @property
    def client(self) -> Client:
        """The session this utterance is spoken on."""
        return self._client

    @property
    def ttfa_ms(self) -> float | None:
        """Client-side time to first audio: ``speak`` sent to first audio received."""
        return None if self.first_audio is None else (self.first_audio - self.sent) * 1000

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received so far."""
        width = 4 if self._client.format == "pcm_f32le" else 2
        return sum(len(c.data) for c in self.chunks) / width / self._client.sample_rate

    # --- receiving ----------------------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        """Called by the client's reader for each message with this utterance's id."""
        self._queue.put_nowait(message)
        self._last_message = time.monotonic()
        kind = message.get("type")
        if kind == "flushed" and self._flushes:
            _settle(self._flushes.pop(0), True)
        elif kind == "done":
            self._over = True
            # Ended before answering (cancelled, failed): those flushes will never be answered.
            for waiting in self._flushes:
                _settle(waiting, False)
            self._flushes.clear()
        elif kind == "error" and message.get("fatal"):
            self._over = True
            for waiting in self._flushes:
                if not waiting.done():
                    waiting.set_exception(ServerError.from_message(message))
            self._flushes.clear()

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        async for event in self.events():
            if isinstance(event, AudioChunk):
                yield event

    async def events(self) -> AsyncIterator[SpeechEvent]:
        """The audio chunks, segments and ``flushed`` answers in the order they came; ends at ``done``."""
        while self.done is None:
            message = await self._next()
            handler = _HANDLERS.get(str(message.get("type")))
            event = handler(self, message) if handler else None
            if event is not None:
                yield event
        if self.errors and self.done.cancelled:
            # The server ended (or refused) the utterance because of this error.
            raise self.errors[0]

    async def _next(self) -> dict[str, Any]:
        if self._deadline is None:
            return await self._queue.get()
        remaining = self._deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._queue.get(), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise self._timed_out() from None
        if self.first_audio is not None or message.get("type") == "audio":
            self._deadline = _deadline(self._client.timeouts.idle)
        return message

    def _timed_out(self) -> Timeout:
        # The server may still be working on it: tell it to stop (its done is then stray).
        self.cancel_soon()
        if self.first_audio is None:
            return Timeout("first_audio", self._client.timeouts.first_audio or 0, f"the first audio of utterance {self.id!r}")
        return Timeout("idle", self._client.timeouts.idle or 0, f"more audio of utterance {self.id!r}")

    def _on_audio(self, message: dict[str, Any]) -> AudioChunk:
        chunk = AudioChunk(int(message.get("seq", len(self.chunks))), bytes(message.get("data") or b""), message["_received"])
        if self.first_audio is None:
            self.first_audio = chunk.received
        self.chunks.append(chunk)
        return chunk

    def _on_segment(self, message: dict[str, Any]) -> Segment:
        segment = Segment.parse(message)
        self.segments.append(segment)
        return segment

    def _on_flushed(self, message: dict[str, Any]) -> Flushed:
        return Flushed.parse(message)

    def _on_done(self, message: dict[str, Any]) -> None:
        self.done = Done.parse(message)

    def _on_error(self, message: dict[str, Any]) -> None:
        error = ServerError.from_message(message)
        self.errors.append(error)
        if error.fatal:
            raise error

    async def collect(self, timeout: float | None = None) -> Speech:
        """Receive the whole utterance; ``timeout`` bounds it overall (None: only the step limits)."""

        async def drain() -> None:
            async for _ in self:
                pass

        if timeout is None:
            await drain()
        else:
            try:
                await asyncio.wait_for(drain(), timeout)
            except Timeout:
                raise
            except asyncio.TimeoutError:
                self.cancel_soon()
                raise Timeout("overall", timeout, f"all of utterance {self.id!r}") from None
        return self

    # --- sending ------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Append text to an utterance opened with ``final=False``."""
        await self._client.send({"type": "text", "id": self.id, "text": text})

    async def end(self) -> None:
        """No more text: the server speaks what is left, and the waits become bounded."""
        await self._client.send({"type": "end", "id": self.id})
        self._text_complete()

    async def flush(self) -> bool:
        """Have the text sent so far spoken now; True once its audio has all been sent.

        False when the utterance ended first without answering (cancelled or
        failed: iterating it says why), at once when it is already over. More
        text may follow a flush.
        """
        if self._over:
            return False
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flushes.append(answered)
        try:
            await self._client.send({"type": "flush", "id": self.id})
        except BaseException:
            self._flushes.remove(answered)
            raise
        self._last_message = time.monotonic()
        limit = self._client.timeouts.first_audio
        while not answered.done():
            if limit is None:
                return await answered
            remaining = self._last_message + limit - time.monotonic()
            if remaining <= 0:
                self.cancel_soon()
                raise Timeout("flush", limit, f"the answer to a flush of utterance {self.id!r}")
            with contextlib.suppress(asyncio.TimeoutError):
                # Shielded: the wait times out in slices, the answer stays awaited.
                await asyncio.wait_for(asyncio.shield(answered), remaining)
        return answered.result()

    async def cancel(self) -> None:
        """Stop the utterance: the server stops generating and answers ``done`` with ``cancelled``."""
        await self._client.send({"type": "cancel", "id": self.id})

    def cancel_soon(self) -> None:
        """``cancel`` in the background (a timeout, a stream closed by an interruption); failures are dropped."""
        self._client.run_soon(self.cancel())

    def _text_complete(self) -> None:
        if self._deadline is None:
            timeouts = self._client.timeouts
            self._deadline = _deadline(timeouts.first_audio if self.first_audio is None else timeouts.idle)

    # --- the audio ----------------------------------------------------------

    def pcm_bytes(self) -> bytes:
        """All audio received, exactly as it came (the session's format)."""
        return b"".join(chunk.data for chunk in self.chunks)

    def pcm(self) -> np.ndarray:
        """All audio received, as float32 at the session's sample rate."""
        data = self.pcm_bytes()
        if self._client.format == "pcm_f32le":
            return np.frombuffer(data, dtype="<f4").astype(np.float32)
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

    def wav(self) -> bytes:
        """All audio received as a 16-bit mono WAV file."""
        return wav_bytes(self.pcm(), self._client.sample_rate)


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


_HANDLERS: dict[str, Callable[[Speech, dict[str, Any]], SpeechEvent | None]] = {
    "audio": Speech._on_audio,
    "segment": Speech._on_segment,
    "flushed": Speech._on_flushed,
    "done": Speech._on_done,
    "error": Speech._on_error,
}
"""What each server message for an utterance does; any other type is ignored."""
