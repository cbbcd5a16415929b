"""One utterance through the engine: text in (whole or streamed), audio out.

Shared by the protocol sessions and the HTTP speech endpoint. Text is cut into
sentences as it arrives; each sentence is one engine request, in order, in one
voice (the engine may anchor a designed voice to its first sentence's audio).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .engines.base import SAMPLE_RATE, Engine, SynthesisRequest, Voice
from .text import SentenceBuffer

# A listener's buffered audio is due before it runs out; the next sentence is
# asked for this long before that moment (the scheduler's deadline).
_SEGMENT_MARGIN_S = 1.0


@dataclass
class Utterance:
    id: str
    voice: Voice
    language: str = "auto"
    started: float = field(default_factory=time.monotonic)
    text: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    chars: int = 0
    ended: bool = False
    task: asyncio.Task[None] | None = None
    first_audio: float | None = None
    audio_samples: int = 0
    generation_s: float = 0.0

    def add_text(self, text: str) -> None:
        self.chars += len(text)
        self.text.put_nowait(text)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.text.put_nowait(None)

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.first_audio is None else round((self.first_audio - self.started) * 1000, 1)

    @property
    def audio_ms(self) -> int:
        return round(self.audio_samples * 1000 / SAMPLE_RATE)

    @property
    def rtf(self) -> float | None:
        return round(self.generation_s * SAMPLE_RATE / self.audio_samples, 4) if self.audio_samples else None

    def deadline(self) -> float | None:
        if self.first_audio is None:
            return None
        return self.first_audio + self.audio_samples / SAMPLE_RATE - _SEGMENT_MARGIN_S


async def speak(engine: Engine, utterance: Utterance) -> AsyncIterator[np.ndarray]:
    """The utterance's audio, 24 kHz float32 chunks, as the engine makes it."""
    sentences = SentenceBuffer()
    voice, first = utterance.voice, True
    while True:
        piece = await utterance.text.get()
        for segment in sentences.push(piece) if piece is not None else sentences.flush():
            request = SynthesisRequest(segment, voice, utterance.language, utterance.deadline(), first)
            kept: list[np.ndarray] = []
            async for chunk in _segment(engine, utterance, request):
                if first:
                    kept.append(chunk)
                yield chunk
            if first and kept:
                voice = engine.continuation(voice, segment, np.concatenate(kept))
            first = False
        if piece is None:
            return


async def _segment(engine: Engine, utterance: Utterance, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
    began = time.monotonic()
    stream = engine.synthesize(request)
    try:
        async for chunk in stream:
            if utterance.first_audio is None:
                utterance.first_audio = time.monotonic()
                metrics.TTFA.observe(utterance.first_audio - utterance.started)
            utterance.audio_samples += len(chunk)
            # Time spent in the consumer (sending) is not generation time.
            utterance.generation_s += time.monotonic() - began
            yield chunk
            began = time.monotonic()
    finally:
        # Closing the engine's stream is what stops its work on cancel.
        await stream.aclose()  # type: ignore[attr-defined]
