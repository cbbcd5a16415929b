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
from typing import Union

import numpy as np

from . import metrics
from .audio import SAMPLE_RATE
from .engines.base import Engine, SynthesisRequest, Voice
from .errors import LimitExceeded
from .text import Segmenter, piece_spans, tidy, unmarked

# A listener's buffered audio is due before it runs out; the next sentence is
# asked for this long before that moment (the scheduler's deadline).
_SEGMENT_MARGIN_S = 1.0
FLUSH = object()


@dataclass
class Utterance:
    id: str
    voice: Voice
    language: str = "auto"
    started: float = field(default_factory=time.monotonic)
    owner: str | None = None
    """The session it belongs to: engines give each owner a fair turn."""
    path: str = "socket"
    """``socket`` or ``http``: how metrics tell the two apart."""
    text: asyncio.Queue[str | object | None] = field(default_factory=asyncio.Queue)
    """Text as it comes; ``FLUSH`` where the client asked for what it has to be spoken now; None at the end."""
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

    def flush(self) -> bool:
        """Speak what has been given so far now. False once ended: the end flushes everything anyway."""
        if self.ended:
            return False
        self.text.put_nowait(FLUSH)
        return True

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
            metrics.TTFA.labels(self.path).observe(self.first_audio - self.started)
        self.audio_samples += len(chunk)
        metrics.AUDIO.labels(self.path).inc(len(chunk) / SAMPLE_RATE)

    def finished(self) -> None:
        """It was spoken to its end: its real-time factor counts."""
        if self.rtf is not None:
            metrics.RTF.labels(self.path).observe(self.rtf)

    def deadline(self) -> float | None:
        if self.first_audio is None:
            return None
        return self.first_audio + self.audio_samples / SAMPLE_RATE - _SEGMENT_MARGIN_S


@dataclass(frozen=True)
class SegmentBegins:
    """The audio that follows speaks ``text``, which lies at [start, end) of the utterance's text."""

    index: int
    text: str
    start: int
    end: int
    audio_ms: int


@dataclass(frozen=True)
class FlushReached:
    """All audio of the text given before a ``flush`` has been yielded."""


SpeechEvent = Union[np.ndarray, SegmentBegins, FlushReached]


@dataclass(frozen=True)
class AudioBudget:
    """How much audio text may become: engines expand numbers and symbols, and a runaway model does not stop."""

    per_char_s: float = 1.0
    floor_s: float = 3.0
    utterance_s: float = 900.0

    def for_segment(self, text: str) -> int:
        return int((self.floor_s + self.per_char_s * len(text)) * SAMPLE_RATE)


async def speak(engine: Engine, utterance: Utterance, budget: AudioBudget | None = None) -> AsyncIterator[SpeechEvent]:
    """The utterance as it is spoken: 24 kHz float32 chunks, with a ``SegmentBegins`` before each
    piece of text's audio and a ``FlushReached`` where the client flushed."""
    budget = budget or AudioBudget()
    sentences = Segmenter(utterance.language)
    lead_in = LeadInTrim()
    voice, index = utterance.voice, 0
    while True:
        item = await utterance.text.get()
        released = sentences.push(item) if isinstance(item, str) else sentences.flush()
        for sentence in released:
            spoken = unmarked(sentence)  # the same length: offsets into the client's text hold
            marked = spoken != sentence
            for start, end in piece_spans(spoken, engine.info.segment_chars, utterance.language, head=index == 0 and not engine.info.incremental):
                text = tidy(spoken[start:end]) if marked else spoken[start:end]
                yield SegmentBegins(index, text, sentence.start + start, sentence.start + end, utterance.audio_ms)
                request = SynthesisRequest(text, voice, utterance.language, utterance.deadline(), index == 0, utterance.owner)
                kept: list[np.ndarray] = []
                async for raw in _segment(engine, utterance, request, budget):
                    if index == 0:
                        kept.append(raw)
                    chunk = lead_in.trim(raw)
                    if len(chunk):
                        utterance.count(chunk)
                        yield chunk
                if index == 0 and kept:
                    voice = engine.continuation(voice, text, np.concatenate(kept))
                index += 1
        if item is FLUSH:
            yield FlushReached()
        if item is None:
            return


async def speak_audio(engine: Engine, utterance: Utterance, budget: AudioBudget | None = None) -> AsyncIterator[np.ndarray]:
    """Only the audio of ``speak``: for the paths that have no use for the timing."""
    async for event in speak(engine, utterance, budget):
        if isinstance(event, np.ndarray):
            yield event


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


async def _segment(engine: Engine, utterance: Utterance, request: SynthesisRequest, budget: AudioBudget) -> AsyncIterator[np.ndarray]:
    began = time.monotonic()
    allowed = budget.for_segment(request.text)
    made = 0
    stream = engine.synthesize(request)
    try:
        async for chunk in stream:
            # Time spent in the consumer (sending) is not generation time.
            utterance.generation_s += time.monotonic() - began
            made += len(chunk)
            if made > allowed:
                raise LimitExceeded(
                    f"{request.text[:40]!r} became more than {allowed / SAMPLE_RATE:.0f} s of audio; the engine cannot say it sensibly"
                )
            if utterance.audio_samples + len(chunk) > budget.utterance_s * SAMPLE_RATE:
                raise LimitExceeded(f"the utterance reached its limit of {budget.utterance_s:.0f} s of audio")
            yield chunk
            began = time.monotonic()
    finally:
        # Closing the engine's stream is what stops its work on cancel.
        await stream.aclose()  # type: ignore[attr-defined]
