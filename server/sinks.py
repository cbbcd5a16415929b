"""Where an utterance's audio goes: ``audio`` messages on the socket, or a media track.

A sink is told when an utterance begins (so it keeps utterances in the order
they were spoken), gets its 24 kHz float32 audio in order, and then exactly
one of ``end`` (all audio has been written) or ``discard`` (drop what is
still queued: cancel, failure, disconnect).

``MessageSink`` sends PCM, resampled to the session's rate, or, for
``format: "opus"``, Ogg/Opus pages: each utterance is one Ogg stream, encoded
on the utterance's own thread (``EncodingStream``); its first message begins
with the Ogg headers and its last page, sent before ``done``, ends the stream.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .audio import SAMPLE_RATE, StreamResampler, to_pcm_bytes
from .encoding import EncodingStream
from .outbox import Outbox


class AudioSink(Protocol):
    def begin(self, utterance_id: str) -> None: ...

    async def write(self, utterance_id: str, pcm: np.ndarray) -> None: ...

    async def drain(self, utterance_id: str) -> None:
        """Return once the audio written so far is on its way to the client (for ``flushed``)."""
        ...

    async def end(self, utterance_id: str) -> None: ...

    def discard(self, utterance_id: str) -> None: ...


class MessageSink:
    """Audio as protocol ``audio`` messages, in the format and rate the client's ``hello`` chose."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._connection = outbox.connection
        self._resamplers: dict[str, StreamResampler] = {}
        self._encoders: dict[str, EncodingStream] = {}

    @property
    def _format(self) -> tuple[str, int]:
        hello = self._connection.hello
        return (hello.format, hello.sample_rate) if hello is not None else ("pcm_s16le", SAMPLE_RATE)

    def begin(self, utterance_id: str) -> None:
        fmt, rate = self._format
        if fmt == "opus":
            self._encoders[utterance_id] = EncodingStream("opus", rate)
        else:
            self._resamplers[utterance_id] = StreamResampler(rate)

    async def write(self, utterance_id: str, pcm: np.ndarray) -> None:
        encoding = self._encoders.get(utterance_id)
        if encoding is not None:
            await self._send_bytes(utterance_id, await encoding.encode(pcm))
            return
        resampler = self._resamplers.get(utterance_id)
        if resampler is not None:
            await self._send(utterance_id, resampler.process(pcm))

    async def drain(self, utterance_id: str) -> None:
        """Queued in order on the connection: audio written is ahead of whatever is sent next."""

    async def end(self, utterance_id: str) -> None:
        encoding = self._encoders.get(utterance_id)
        if encoding is not None:
            # The tail carries the end-of-stream page: done comes after it.
            await self._send_bytes(utterance_id, await encoding.finish())
            del self._encoders[utterance_id]
            return
        resampler = self._resamplers.pop(utterance_id, None)
        if resampler is not None and not resampler.passthrough:
            await self._send(utterance_id, resampler.process(np.zeros(0, np.float32), last=True))

    def discard(self, utterance_id: str) -> None:
        self._resamplers.pop(utterance_id, None)
        encoding = self._encoders.pop(utterance_id, None)
        if encoding is not None:
            encoding.close()
        self._connection.discard_audio(utterance_id)

    async def _send(self, utterance_id: str, pcm: np.ndarray) -> None:
        if len(pcm):
            await self._send_bytes(utterance_id, to_pcm_bytes(pcm, self._format[0]))

    async def _send_bytes(self, utterance_id: str, data: bytes) -> None:
        if data:
            await self._outbox.room()
            self._connection.send_audio(utterance_id, data)
