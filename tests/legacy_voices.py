"""The voice library as it was before the audio moved into the database (frozen copy).

Kept only to make libraries "of today's layout" for the migration test:
``voices.sqlite3`` plus ``voices/<id>/reference.wav``, written by the very code
that wrote them (the engine-reference cache it had is left out).

The original docstring follows.

The voice library: saved voices in SQLite (WAL) plus reference audio files.

A voice is designed (its description, and a reference the engine rendered from
it when the engine needs one to keep the timbre) or cloned (its reference
recording as 24 kHz mono, and what was said in it). Ids are made here; no name
or id from a client ever becomes a path. All file and database work runs on one
thread the library owns, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from server.audio import duration_ms, write_wav
from server.errors import BadMessage, VoiceNotFound

T = TypeVar("T")
_ID = re.compile(r"^v_[0-9a-f]{16}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('design', 'clone')),
    design TEXT,
    ref_text TEXT,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    has_audio INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class VoiceRecord:
    id: str
    name: str
    kind: str
    design: str | None
    ref_text: str | None
    duration_ms: int
    has_audio: bool
    created: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LegacyVoiceLibrary:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "voices"
        self._db_path = data_dir / "voices.sqlite3"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="voices")
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # --- queries ---------------------------------------------------------

    async def all(self) -> list[VoiceRecord]:
        return await self._call(self._all)

    def _all(self) -> list[VoiceRecord]:
        rows = self._conn().execute("SELECT * FROM voices ORDER BY created").fetchall()
        return [_record(row) for row in rows]

    async def get(self, voice_id: str) -> VoiceRecord:
        return await self._call(self._get, voice_id)

    def _get(self, voice_id: str) -> VoiceRecord:
        row = None
        if _ID.match(voice_id):
            row = self._conn().execute("SELECT * FROM voices WHERE id = ?", (voice_id,)).fetchone()
        if row is None:
            raise VoiceNotFound(f"no saved voice {voice_id[:64]!r}")
        return _record(row)

    # --- changes -----------------------------------------------------------

    async def save(
        self,
        *,
        name: str,
        kind: str,
        design: str | None = None,
        audio: np.ndarray | None = None,
        ref_text: str | None = None,
    ) -> VoiceRecord:
        name = _clean_name(name, kind)
        return await self._call(self._save, name, kind, design, audio, ref_text)

    def _save(self, name: str, kind: str, design: str | None, audio: np.ndarray | None, ref_text: str | None) -> VoiceRecord:
        voice_id = "v_" + secrets.token_hex(8)
        length = 0
        if audio is not None:
            folder = self.root / voice_id
            folder.mkdir(parents=True)
            write_wav(folder / "reference.wav", audio)
            length = duration_ms(audio)
        record = VoiceRecord(voice_id, name, kind, design, ref_text, length, audio is not None, time.time())
        self._conn().execute(
            "INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.name, record.kind, record.design, record.ref_text, record.duration_ms, int(record.has_audio), record.created),
        )
        return record

    async def rename(self, voice_id: str, name: str) -> VoiceRecord:
        record = await self.get(voice_id)
        await self._call(lambda: self._conn().execute("UPDATE voices SET name = ? WHERE id = ?", (_clean_name(name, record.kind), voice_id)))
        return await self.get(voice_id)

    async def delete(self, voice_id: str) -> None:
        record = await self.get(voice_id)
        await self._call(self._delete, record.id)

    def _delete(self, voice_id: str) -> None:
        self._conn().execute("DELETE FROM voices WHERE id = ?", (voice_id,))
        shutil.rmtree(self.root / voice_id, ignore_errors=True)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the voice library is not open")
        return self._db


def _record(row: tuple[Any, ...]) -> VoiceRecord:
    voice_id, name, kind, design, ref_text, length, has_audio, created = row
    return VoiceRecord(voice_id, name, kind, design, ref_text, int(length), bool(has_audio), float(created))


def _clean_name(name: str | None, kind: str) -> str:
    name = " ".join((name or "").split())[:100]
    if not name:
        return "Designed voice" if kind == "design" else "Cloned voice"
    if not name.isprintable():
        raise BadMessage("a voice name must be printable text")
    return name
