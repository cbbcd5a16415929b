"""One utterance as the client sees it: its audio as it arrives, then its ``done``.

The client's reader hands a ``Speech`` every message that carries its ``id``;
iterating the ``Speech`` yields the audio chunks and ends at ``done``. Each
message type has its handler in ``_HANDLERS``; a type this client does not
know (a newer server's) is ignored, so additions to v1 need a handler here
and nothing else.

Waiting is bounded once the text is complete: ``Timeouts.first_audio`` from
then to the first audio (or ``done``), ``Timeouts.idle`` between messages
after that. A ``final=False`` utterance whose text is still coming waits
without a limit, since the caller decides when more text comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ServerError, Timeout
from .messages import AudioChunk, Done
from .wav import wav_bytes

if TYPE_CHECKING:
    from .connection import Client


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
        self._client = client
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._deadline: float | None = None
        if final:
            self._text_complete()

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

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        while self.done is None:
            message = await self._next()
            handler = _HANDLERS.get(str(message.get("type")))
            chunk = handler(self, message) if handler else None
            if chunk is not None:
                yield chunk
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
        self._client.send_soon({"type": "cancel", "id": self.id})
        if self.first_audio is None:
            return Timeout("first_audio", self._client.timeouts.first_audio or 0, f"the first audio of utterance {self.id!r}")
        return Timeout("idle", self._client.timeouts.idle or 0, f"more audio of utterance {self.id!r}")

    def _on_audio(self, message: dict[str, Any]) -> AudioChunk:
        chunk = AudioChunk(int(message.get("seq", len(self.chunks))), bytes(message.get("data") or b""), message["_received"])
        if self.first_audio is None:
            self.first_audio = chunk.received
        self.chunks.append(chunk)
        return chunk

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
                self._client.send_soon({"type": "cancel", "id": self.id})
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

    async def cancel(self) -> None:
        await self._client.send({"type": "cancel", "id": self.id})

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


_HANDLERS: dict[str, Callable[[Speech, dict[str, Any]], AudioChunk | None]] = {
    "audio": Speech._on_audio,
    "done": Speech._on_done,
    "error": Speech._on_error,
}
"""What each server message for an utterance does; any other type is ignored."""
