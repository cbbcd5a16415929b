"""The engine interface every backend implements.

An engine turns one ``SynthesisRequest`` (a segment of text, a voice, a language)
into an async stream of float32 PCM chunks at 24 kHz mono. Engines own their
threads: model work never runs on the event loop, and one model instance is
never entered by two threads at once. Closing the async iterator (the consumer
stopped, was cancelled or disconnected) stops the work within one generation
step.

One engine instance is shared by every session of the server.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE

LANGUAGE_NAMES = {
    "zh": "chinese", "en": "english", "ja": "japanese", "ko": "korean", "de": "german", "fr": "french",
    "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian",
}  # fmt: skip
"""ISO 639-1 codes of the languages engines name in words."""


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference recording a voice is cloned from.

    ``audio`` is float32 mono at 24 kHz, already trimmed and level-normalised.
    ``key`` is the same for the same audio and text (the library's content
    hash) on every front, so an engine, in process or on a replica, may cache
    what it derives from it (speaker embeddings, codes) in memory and in its
    own cache directory.
    """

    audio: np.ndarray
    text: str | None = None
    key: str | None = None

    @property
    def duration_ms(self) -> int:
        return int(round(len(self.audio) * 1000 / SAMPLE_RATE))


@dataclass(frozen=True, eq=False)
class Voice:
    """Designed (``design`` is a description), cloned (``reference``), or both.

    Both are set when an engine anchors a designed voice to audio it rendered
    from that description (see ``Engine.continuation``): the reference then
    fixes the timbre, and the description is kept for engines that prefer it.
    """

    design: str | None = None
    reference: Reference | None = None
    voice_id: str | None = None

    def __post_init__(self) -> None:
        if self.design is None and self.reference is None:
            raise ValueError("a voice needs a design or a reference")


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: Voice
    language: str = "auto"
    deadline: float | None = None
    """``time.monotonic()`` by which the first audio is needed; None means now.

    Schedulers serve the earliest deadline first, so an utterance's first
    segment (deadline now) overtakes later segments of utterances that still
    have buffered audio to play.
    """
    first: bool = True
    """The first segment of an utterance: the engine favours a small first chunk."""
    owner: Hashable = None
    """Who asked (a session id): schedulers give each owner a fair turn among due work."""
    created: float = field(default_factory=time.monotonic)

    @property
    def due(self) -> float:
        return self.created if self.deadline is None else self.deadline


@dataclass(frozen=True)
class EngineInfo:
    """What ``ready`` and ``/healthz`` report about the engine."""

    name: str
    kind: str
    models: list[str]
    languages: list[str]
    design: bool
    clone: bool
    note: str = ""
    segment_chars: int = 400
    """The longest text one request may carry; the speech layer cuts text to fit."""
    incremental: bool = True
    """Whether a request's audio streams out while it is made (else it comes once rendered whole)."""

    def as_message(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "models": list(self.models),
            "languages": list(self.languages),
            "design": self.design,
            "clone": self.clone,
            "note": self.note,
        }


class Engine(abc.ABC):
    """Base class of the engines. Subclasses set ``info`` and implement ``synthesize``."""

    info: EngineInfo

    async def start(self) -> None:
        """Load models and start worker threads; called once by the app's lifespan."""

    async def close(self) -> None:
        """Stop worker threads and free models; pending streams end with ``Unavailable``."""

    @abc.abstractmethod
    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Stream PCM chunks (float32, 24 kHz mono) for one segment of text."""

    def check_text(self, text: str) -> None:
        """Raise (``UnsupportedLanguage``...) when this engine cannot say ``text``, before any audio is made."""

    def speaks(self, language: str) -> bool:
        """Whether ``language`` ("auto", an ISO code like "en-US", or a name) is one of ``info.languages``."""
        wanted = language.lower()
        code = wanted.split("-")[0].split("_")[0]
        known = {name.lower() for name in self.info.languages}
        names = {LANGUAGE_NAMES.get(name, name) for name in known}
        return wanted == "auto" or wanted in known or code in known or LANGUAGE_NAMES.get(code, wanted) in names or wanted in names

    def continuation(self, voice: Voice, text: str, audio: np.ndarray) -> Voice:
        """The voice to use for the next segments, given the first segment's audio.

        Engines whose designed voices drift between segments return a voice
        anchored to ``audio``; the default keeps ``voice`` as it is.
        """
        return voice

    async def render_design(self, description: str, language: str = "auto") -> Reference | None:
        """Render a reference for a designed voice that is being saved, or None.

        Engines that can keep a designed voice's timbre across utterances only
        by cloning it return the rendered reference; the library stores it.
        """
        return None

    def health(self) -> dict[str, Any]:
        """State for ``/healthz`` and ``ready`` (resident models, queue depth...)."""
        return {"state": "ready"}
