"""The library's earlier layout: ``voices.sqlite3`` and ``voices/<id>/reference.wav`` in the data dir.

Libraries made before the audio moved into the database look like this. The
voice library imports one once, on its first start against a database (see
``VoiceLibrary``); this module only reads it. Nothing here is changed or
removed, so the earlier server still runs on the same data directory and
nothing can be lost by the import.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
import wave
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("minestream.voices")

LEGACY_DB = "voices.sqlite3"
_ID = re.compile(r"^v_[0-9a-f]{16}$")


@dataclass(frozen=True)
class LegacyVoice:
    id: str
    name: str
    kind: str
    design: str | None
    ref_text: str | None
    duration_ms: int
    created: float
    wav: bytes | None
    """The reference recording's WAV file, byte for byte; None for a voice that had none."""
    sample_rate: int = 0


def legacy_database(data_dir: Path) -> Path | None:
    path = data_dir / LEGACY_DB
    return path if path.is_file() else None


def read_legacy(data_dir: Path) -> list[LegacyVoice]:
    """Every voice of the library in ``data_dir``, oldest first (blocking: run it on a thread)."""
    path = data_dir / LEGACY_DB
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id, name, kind, design, ref_text, duration_ms, has_audio, created FROM voices ORDER BY created").fetchall()
    finally:
        db.close()
    voices = []
    for voice_id, name, kind, design, ref_text, length, has_audio, created in rows:
        if not isinstance(voice_id, str) or not _ID.match(voice_id) or kind not in ("design", "clone"):
            log.warning("legacy library %s: skipping a malformed row %r", path, voice_id)
            continue
        wav, rate = _wav(data_dir, voice_id) if has_audio else (None, 0)
        voices.append(LegacyVoice(voice_id, name, kind, design, ref_text, int(length), float(created), wav, rate))
    return voices


def _wav(data_dir: Path, voice_id: str) -> tuple[bytes | None, int]:
    path = data_dir / "voices" / voice_id / "reference.wav"
    try:
        data = path.read_bytes()
        with wave.open(io.BytesIO(data), "rb") as wav:
            return data, int(wav.getframerate())
    except (OSError, EOFError, wave.Error) as exc:
        log.warning("legacy library: the reference of voice %s is unreadable (%s); the voice is kept without it", voice_id, exc)
        return None, 0
