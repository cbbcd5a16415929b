"""One output stream's audio work, on a thread the stream owns: time-stretch, then encode.

An ``Encoder`` (server/encoders.py) is CPU work and one stream; a
``TimeStretch`` too. ``EncodingStream`` runs both on a single worker thread
of its own, so the event loop never encodes and the encoder is never entered
by two threads at once: each call is awaited before the next is made, so a
stream has at most one chunk of work in flight (a producer faster than the
codec waits for it). The thread starts with the first chunk and stops when
the stream is finished or closed; ``close`` (a cancel, a listener gone) is
queued behind the work in flight and does not wait for it.

Used by the HTTP speech endpoint (one stream per response) and by the
socket's ``format: "opus"`` (one stream per utterance).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .audio import SAMPLE_RATE
from .encoders import CONTENT_TYPES, FORMATS, Encoder, encoder
from .stretch import TimeStretch


class EncodingStream:
    def __init__(self, format: str, sample_rate: int = SAMPLE_RATE, *, speed: float = 1.0, bitrate: int | None = None) -> None:
        """Raises ``ValueError`` for a format, rate or speed the encoders do not take."""
        if format not in FORMATS:
            raise ValueError(f"unknown audio format {format!r}: use one of {', '.join(FORMATS)}")
        self.format = format
        self.content_type = CONTENT_TYPES[format]
        self._make = lambda: encoder(format, sample_rate, bitrate=bitrate)
        self._encoder: Encoder | None = None  # made on the thread: opening a codec can take milliseconds
        self._stretch = TimeStretch(speed)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{format}")
        self.samples = 0
        """Samples sent to the encoder so far, at 24 kHz (after the stretch)."""
        self._closed = False

    async def encode(self, pcm: np.ndarray) -> bytes:
        """The bytes ``pcm`` (24 kHz float32) completes; often empty while a codec fills a frame."""
        return await self._run(self._encode, pcm)

    async def finish(self) -> bytes:
        """The stream's last bytes (codec tail, container trailer); the thread stops."""
        try:
            return await self._run(self._finish)
        finally:
            self.close()

    def close(self) -> None:
        """Abandon the stream: the encoder is freed after any work in flight; returns at once."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._close_encoder)
        self._thread.shutdown(wait=False)

    async def _run(self, work: object, *args: object) -> bytes:
        if self._closed:
            raise RuntimeError(f"the {self.format} stream is closed")
        loop = asyncio.get_running_loop()
        result: bytes = await loop.run_in_executor(self._thread, work, *args)  # type: ignore[arg-type]
        return result

    # --- on the stream's thread -------------------------------------------------

    def _opened(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._make()
        return self._encoder

    def _encode(self, pcm: np.ndarray) -> bytes:
        stretched = self._stretch.process(pcm)
        self.samples += len(stretched)
        return self._opened().encode(stretched)

    def _finish(self) -> bytes:
        tail = self._stretch.process(np.zeros(0, np.float32), last=True)
        self.samples += len(tail)
        encoder = self._opened()
        return encoder.encode(tail) + encoder.finish()

    def _close_encoder(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
