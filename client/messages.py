"""Typed views of the server's protocol v1 messages.

Each dataclass names the fields this client knows and keeps the message as
received in ``raw``: a newer server's added fields stay reachable without a
client release (``ready["new_field"]`` or ``ready.raw``), and code written
when these were plain dicts keeps working. Parsing is lenient: a field a
server leaves out gets its default rather than an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RawFields:
    """Item access to the raw message: ``done["audio_ms"]``, ``"engine" in ready``."""

    raw: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


def _raw() -> Any:
    return field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class EngineInfo(RawFields):
    """What the server says about its engine (``ready.engine``)."""

    name: str
    kind: str
    """``preview`` (Piper; design and cloning approximated) or ``qwen`` (Qwen3-TTS)."""
    models: list[str]
    languages: list[str]
    design: bool
    clone: bool
    note: str = ""
    """Said in words, to show to people."""
    state: str = "ready"
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> EngineInfo:
        return cls(
            name=str(m.get("name", "")),
            kind=str(m.get("kind", "")),
            models=list(m.get("models") or []),
            languages=list(m.get("languages") or []),
            design=bool(m.get("design")),
            clone=bool(m.get("clone")),
            note=str(m.get("note") or ""),
            state=str(m.get("state") or "ready"),
            raw=m,
        )


@dataclass(frozen=True)
class Limits(RawFields):
    max_text_chars: int
    max_ref_seconds: float
    max_open_utterances: int
    max_message_bytes: int
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Limits:
        return cls(
            max_text_chars=int(m.get("max_text_chars", 0)),
            max_ref_seconds=float(m.get("max_ref_seconds", 0)),
            max_open_utterances=int(m.get("max_open_utterances", 0)),
            max_message_bytes=int(m.get("max_message_bytes", 0)),
            raw=m,
        )


@dataclass(frozen=True)
class Ready(RawFields):
    """The server's answer to ``hello``."""

    protocol: int
    session: str
    engine: EngineInfo
    format: str
    sample_rate: int
    limits: Limits
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Ready:
        return cls(
            protocol=int(m.get("protocol", 1)),
            session=str(m.get("session", "")),
            engine=EngineInfo.parse(m.get("engine") or {}),
            format=str(m.get("format", "pcm_s16le")),
            sample_rate=int(m.get("sample_rate", 24000)),
            limits=Limits.parse(m.get("limits") or {}),
            raw=m,
        )


@dataclass(frozen=True)
class AudioChunk:
    seq: int
    data: bytes
    """PCM in the session's format and rate, mono, little-endian."""
    received: float
    """``time.perf_counter()`` when the message arrived."""


@dataclass(frozen=True)
class Done(RawFields):
    """The last message of an utterance."""

    id: str
    cancelled: bool
    audio_ms: float
    ttfa_ms: float | None
    """Measured on the server, ``speak`` to the first audio sent; None when no audio was made."""
    rtf: float | None
    """Generation time over audio duration (below 1 is faster than real time)."""
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Done:
        return cls(
            id=str(m.get("id", "")),
            cancelled=bool(m.get("cancelled")),
            audio_ms=float(m.get("audio_ms") or 0),
            ttfa_ms=_optional_float(m.get("ttfa_ms")),
            rtf=_optional_float(m.get("rtf")),
            raw=m,
        )


@dataclass(frozen=True)
class Segment(RawFields):
    """Which text the audio that follows speaks (sent only to sessions connected with ``segments=True``).

    ``text`` lies at ``[text_start, text_end)`` of the utterance's text as
    given (the ``speak`` text followed by each ``send``, in code points);
    ``audio_ms`` is where its audio starts in the utterance's audio. Exact at
    sentence level (the server's pieces), not per word.
    """

    id: str
    index: int
    text: str
    text_start: int
    text_end: int
    audio_ms: float
    received: float = 0.0
    """``time.perf_counter()`` when the message arrived."""
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Segment:
        return cls(
            id=str(m.get("id", "")),
            index=int(m.get("index") or 0),
            text=str(m.get("text") or ""),
            text_start=int(m.get("text_start") or 0),
            text_end=int(m.get("text_end") or 0),
            audio_ms=float(m.get("audio_ms") or 0),
            received=float(m.get("_received") or 0.0),
            raw=m,
        )


@dataclass(frozen=True)
class Flushed(RawFields):
    """The audio of all text sent before a ``flush`` has been sent."""

    id: str
    received: float = 0.0
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Flushed:
        return cls(id=str(m.get("id", "")), received=float(m.get("_received") or 0.0), raw=m)


@dataclass(frozen=True)
class Progress(RawFields):
    """How much of an upload the server has decoded so far."""

    ref: str
    decoded_ms: float
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Progress:
        return cls(ref=str(m.get("ref", "")), decoded_ms=float(m.get("decoded_ms") or 0), raw=m)


@dataclass(frozen=True)
class Pong(RawFields):
    t: Any
    raw: dict[str, Any] = _raw()


@dataclass(frozen=True)
class Voice(RawFields):
    """A saved voice of the library (``/v1/voices``), or the one an upload just made.

    An upload's answer (the socket's ``voice`` message) carries only ``id``,
    ``name`` and ``duration_ms``; the library's fields it lacks are None.
    """

    id: str
    name: str
    kind: str
    """``clone`` (from a recording) or ``design`` (from a description)."""
    duration_ms: float
    design: str | None = None
    ref_text: str | None = None
    has_audio: bool | None = None
    created: float | None = None
    """Unix time."""
    raw: dict[str, Any] = _raw()

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Voice:
        """A library entry (HTTP) or an upload's ``voice`` message."""
        uploaded = m.get("type") == "voice"
        return cls(
            id=str(m.get("voice_id") if uploaded else m.get("id", "")),
            name=str(m.get("name") or ""),
            kind="clone" if uploaded else str(m.get("kind", "")),
            duration_ms=float(m.get("duration_ms") or 0),
            design=m.get("design"),
            ref_text=m.get("ref_text"),
            has_audio=True if uploaded else m.get("has_audio"),
            created=_optional_float(m.get("created")),
            raw=m,
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
