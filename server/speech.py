"""One utterance through the engine: text in (whole or streamed), audio out.

Shared by the protocol sessions and the HTTP speech endpoint. This is the one
place text becomes engine requests: it is cut into sentences as it arrives,
each sentence into pieces no longer than the engine takes
(``EngineInfo.segment_chars``), and each piece is one request, in order, in
one voice. After the first piece the engine may anchor a designed voice to
the audio it made (``Engine.continuation``), so every later piece keeps its
timbre.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .audio import SAMPLE_RATE
from .engines.base import Engine, EngineInfo, SynthesisRequest, Voice
from .text import Segmenter, pieces

# A listener's buffered audio is due before it runs out; the next sentence is
# asked for this long before that moment (the scheduler's deadline).
_SEGMENT_MARGIN_S = 1.0


@dataclass
class Utterance:
    id: str
    voice: Voice
    language: str = "auto"
    started: float = field(default_factory=time.monotonic)
    owner: str | None = None
    """The session it belongs to: engines give each owner a fair turn."""
    text: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    chars: int = 0
    ended: bool = False
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

    def count(self, chunk: np.ndarray) -> None:
        if self.first_audio is None:
            self.first_audio = time.monotonic()
            metrics.TTFA.observe(self.first_audio - self.started)
        self.audio_samples += len(chunk)

    def deadline(self) -> float | None:
        if self.first_audio is None:
            return None
        return self.first_audio + self.audio_samples / SAMPLE_RATE - _SEGMENT_MARGIN_S


async def speak(engine: Engine, utterance: Utterance) -> AsyncIterator[np.ndarray]:
    """The utterance's audio, 24 kHz float32 chunks, as the engine makes it."""
    sentences = Segmenter(utterance.language)
    lead_in = LeadInTrim()
    voice, first = utterance.voice, True
    while True:
        piece = await utterance.text.get()
        for sentence in sentences.push(piece) if piece is not None else sentences.flush():
            for segment in engine_pieces(sentence, engine.info, utterance.language, first=first):
                request = SynthesisRequest(segment, voice, utterance.language, utterance.deadline(), first, utterance.owner)
                kept: list[np.ndarray] = []
                async for raw in _segment(engine, utterance, request):
                    if first:
                        kept.append(raw)
                    chunk = lead_in.trim(raw)
                    if len(chunk):
                        utterance.count(chunk)
                        yield chunk
                if first and kept:
                    voice = engine.continuation(voice, segment, np.concatenate(kept))
                first = False
        if piece is None:
            return


def engine_pieces(sentence: str, info: EngineInfo, language: str, *, first: bool) -> list[str]:
    """``sentence`` as the engine's requests: at most ``info.segment_chars`` each.

    An engine whose audio comes only once a request is rendered whole
    (``incremental`` False) gets a long first sentence's first clause alone,
    so the listener hears it while the rest is made.
    """
    return pieces(sentence, info.segment_chars, language, head=first and not info.incremental)


class LeadInTrim:
    """Drops the silence an engine puts before an utterance's first word.

    Nobody hears it, yet it costs its whole length in time to first sound
    (Piper starts each sentence with ~36 ms of it). Speech is never cut: a few
    ms before the first sound are kept for its onset, and at most half a
    second is dropped.
    """

    SILENT = 10 ** (-60 / 20)
    PRE_ROLL = SAMPLE_RATE // 500
    MAX_DROP = SAMPLE_RATE // 2

    def __init__(self) -> None:
        self.dropped: int | None = 0  # None once the first sound has passed

    def trim(self, pcm: np.ndarray) -> np.ndarray:
        if self.dropped is None:
            return pcm
        loud = np.flatnonzero(np.abs(pcm) > self.SILENT)
        cut = len(pcm) if not len(loud) else max(0, int(loud[0]) - self.PRE_ROLL)
        cut = min(cut, self.MAX_DROP - self.dropped)
        self.dropped = None if len(loud) or self.dropped + cut >= self.MAX_DROP else self.dropped + cut
        return pcm[cut:]


async def _segment(engine: Engine, utterance: Utterance, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
    began = time.monotonic()
    stream = engine.synthesize(request)
    try:
        async for chunk in stream:
            # Time spent in the consumer (sending) is not generation time.
            utterance.generation_s += time.monotonic() - began
            yield chunk
            began = time.monotonic()
    finally:
        # Closing the engine's stream is what stops its work on cancel.
        await stream.aclose()  # type: ignore[attr-defined]
