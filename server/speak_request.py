"""What a speak request must be, and the voice it names: one check for the socket and HTTP.

A ``speak`` message and ``POST /v1/audio/speech`` pass the same checks (text
length, something speakable, a language the engine speaks, the capability
the voice needs) and resolve their voice the same way, so a request refused
on one path is refused on the other with the same code.
"""

from __future__ import annotations

import unicodedata

from .config import Limits
from .engines.base import Engine, Voice
from .errors import BadMessage, LimitExceeded, NothingToSay, Unavailable, UnsupportedLanguage
from .protocol import VoiceRef
from .text import unmarked
from .voices import VoiceLibrary


def speakable(text: str) -> bool:
    """Whether ``text`` has a letter or a digit in any script."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def check_text(text: str, limits: Limits, *, final: bool = True, already: int = 0) -> None:
    """``already``: characters an open utterance holds before this text."""
    if already + len(text) > limits.max_text_chars:
        raise LimitExceeded(f"text is longer than {limits.max_text_chars} characters")
    if final and already == 0:
        if not text.strip():
            raise BadMessage("'text' is empty")
        if not speakable(unmarked(text)):
            raise NothingToSay("the text has nothing speakable in it (no letter or digit outside markup tags)")


def check_language(engine: Engine, language: str, text: str = "") -> None:
    """``language`` is one the engine speaks, and ``text`` is in a script it reads."""
    engine.check_text(text)
    if not engine.speaks(language):
        raise UnsupportedLanguage(f"this engine speaks {', '.join(engine.info.languages)} (or 'auto'), not {language[:32]!r}")


async def resolve_voice(ref: VoiceRef, engine: Engine, library: VoiceLibrary) -> Voice:
    """The engine voice for ``ref``: a design, or a saved voice (designed or cloned)."""
    if ref.design is not None:
        if not engine.info.design:
            raise Unavailable("this engine cannot design voices")
        return Voice(design=ref.design)
    assert ref.voice_id is not None, "a VoiceRef names a design or a voice id"
    record = await library.get(ref.voice_id)
    reference = await library.reference(record)
    if reference is None:
        return Voice(design=record.design, voice_id=record.id)
    if not engine.info.clone:
        raise Unavailable("this engine cannot clone voices")
    return Voice(design=record.design, reference=reference, voice_id=record.id)
