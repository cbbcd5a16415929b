"""The voice library: saved voices and their reference audio, in one database.

A voice is designed (its description, and a reference the engine rendered from
it when the engine needs one to keep the timbre) or cloned (its reference
recording as 24 kHz mono, and what was said in it). Ids are made here; no name
or id from a client ever becomes a path.

The database is SQLAlchemy 2 async: SQLite (aiosqlite) in the data directory
by default, or the server a URL names (``postgresql+asyncpg://…``) so that
several fronts share one library. Reference audio is stored in it too, so no
front needs a shared filesystem; each reference has a content key (a hash of
its audio and text), the name under which engines cache what they derive from
it, here or on an engine replica. The schema is Alembic's (``server/migrations``),
brought up to date at open (a new database is made and stamped at once, without
loading Alembic, and one already at the newest migration is left alone); a
library of the earlier layout in the data directory (``legacy_library``) is
imported once, and left as it was.

The database being unreachable is ``Unavailable`` on each voice operation,
not a dead server: designed voices keep speaking, and the library reconnects
(and finishes its migration) when the database is back. WAV coding and
hashing run on the library's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import secrets
import socket
import time
import wave
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .audio import duration_ms, from_pcm_bytes, wav_bytes
from .engines.base import SAMPLE_RATE, Reference
from .errors import BadMessage, Unavailable, VoiceNotFound
from .legacy_library import LegacyVoice, legacy_database, read_legacy

T = TypeVar("T")
log = logging.getLogger("minestream.voices")

DEFAULT_DATABASE = "library.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_ID = re.compile(r"^v_[0-9a-f]{16}$")
_MIGRATION_LOCK = 0x6D696E65  # any constant: fronts sharing a PostgreSQL server take turns migrating
_REFERENCE_CACHE = 64

SCHEMA_REVISION = "0001"
"""The newest migration in ``server/migrations/versions/``. A database already there is opened without
loading Alembic (a quarter of a server's start), and a new one is made from the tables below and
stamped with it, as Alembic's own recipe does; ``tests/test_library.py`` holds the tables, the stamp
and the migrations to one another."""

_metadata = sa.MetaData()
voices_table = sa.Table(
    "voices",
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("design", sa.Text()),
    sa.Column("ref_text", sa.Text()),
    sa.Column("duration_ms", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("has_audio", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created", sa.Float(), nullable=False),
    sa.CheckConstraint("kind IN ('design', 'clone')", name="voice_kind"),
    sa.Index("voices_by_created", "created"),
)
audio_table = sa.Table(
    "voice_audio",
    _metadata,
    sa.Column("voice_id", sa.String(32), sa.ForeignKey("voices.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("content_key", sa.String(64), nullable=False),
    sa.Column("sample_rate", sa.Integer(), nullable=False),
    sa.Column("wav", sa.LargeBinary(), nullable=False),
)
imports_table = sa.Table(
    "imported_libraries",
    _metadata,
    sa.Column("source", sa.String(1024), primary_key=True),
    sa.Column("voices", sa.Integer(), nullable=False),
    sa.Column("imported", sa.Float(), nullable=False),
)
_version_table = sa.Table(  # Alembic's, as it makes it
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


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


def content_key(wav: bytes, text: str | None) -> str:
    """The same for the same reference (audio and text) on every front and replica."""
    return hashlib.sha256(wav + b"\0" + (text or "").encode()).hexdigest()[:32]


def default_url(data_dir: Path) -> str:
    return sa.engine.URL.create("sqlite+aiosqlite", database=str((data_dir / DEFAULT_DATABASE).resolve())).render_as_string()


class VoiceLibrary:
    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.url = database_url or default_url(data_dir)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="voices")
        self._engine: AsyncEngine | None = None
        self._migrated = False
        self._migrating = asyncio.Lock()
        self._references: OrderedDict[str, Reference] = OrderedDict()

    @property
    def is_sqlite(self) -> bool:
        return sa.engine.make_url(self.url).get_backend_name() == "sqlite"

    @property
    def where(self) -> str:
        """The database, for messages: its URL without the password."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- open and close -----------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate; a database that is down now is retried on each voice operation."""
        if self.is_sqlite:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._engine = _create_engine(self.url)
        try:
            await self._ready()
        except Unavailable as exc:
            log.warning("%s; voice operations fail until it is reachable", exc.message)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        self._executor.shutdown(wait=True)

    async def _ready(self) -> None:
        if self._migrated:
            return
        async with self._migrating:
            if not self._migrated:
                await self._migrate()
                self._migrated = True

    async def _migrate(self) -> None:
        # Alembic keeps its context in module globals: one migration at a time per process.
        async with _migrations_lock(), self._reachable(), self._connected().connect() as conn:
            # Between processes: SQLite's write lock from the start, PostgreSQL's advisory lock.
            conn = await conn.execution_options(sqlite_immediate=True)
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                await conn.run_sync(_upgrade)
                await self._import_legacy(conn)

    async def _import_legacy(self, conn: AsyncConnection) -> None:
        path = legacy_database(self.data_dir)
        if path is None:
            return
        source = f"{socket.gethostname()}:{path.resolve()}"
        if await conn.scalar(sa.select(imports_table.c.source).where(imports_table.c.source == source)) is not None:
            return
        legacy = await self._call(read_legacy, self.data_dir)
        present = set((await conn.scalars(sa.select(voices_table.c.id).where(voices_table.c.id.in_([v.id for v in legacy])))).all())
        fresh = [voice for voice in legacy if voice.id not in present]
        for voice in fresh:
            await _insert_legacy(conn, voice)
        await conn.execute(sa.insert(imports_table).values(source=source, voices=len(fresh), imported=time.time()))
        log.info("imported %d voices of the library in %s into %s (the old files are left as they were)", len(fresh), path, self.where)

    # --- queries ---------------------------------------------------------

    async def all(self) -> list[VoiceRecord]:
        async with self._transaction() as conn:
            rows = (await conn.execute(sa.select(voices_table).order_by(voices_table.c.created, voices_table.c.id))).all()
        return [_record(row) for row in rows]

    async def get(self, voice_id: str) -> VoiceRecord:
        row = None
        if _ID.match(voice_id):
            async with self._transaction() as conn:
                row = (await conn.execute(sa.select(voices_table).where(voices_table.c.id == voice_id))).first()
        if row is None:
            raise VoiceNotFound(f"no saved voice {voice_id[:64]!r}")
        return _record(row)

    async def audio(self, record: VoiceRecord) -> bytes | None:
        """The voice's reference as the WAV file it was saved as, or None."""
        row = await self._audio_row(record)
        return None if row is None else bytes(row.wav)

    async def reference(self, record: VoiceRecord) -> Reference | None:
        """The voice's reference audio, kept in memory after the first load."""
        if not record.has_audio:
            return None
        cached = self._references.get(record.id)
        if cached is not None:
            self._references.move_to_end(record.id)
            return cached
        row = await self._audio_row(record)
        if row is None:
            return None
        audio = await self._call(_decode_wav, bytes(row.wav))
        cached = Reference(audio=audio, text=record.ref_text, key=row.content_key)
        self._references[record.id] = cached
        while len(self._references) > _REFERENCE_CACHE:
            self._references.popitem(last=False)
        return cached

    async def _audio_row(self, record: VoiceRecord) -> Any:
        if not record.has_audio:
            return None
        async with self._transaction() as conn:
            query = sa.select(audio_table.c.wav, audio_table.c.content_key).where(audio_table.c.voice_id == record.id)
            return (await conn.execute(query)).first()

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
        wav = None if audio is None else await self._call(wav_bytes, audio)
        length = 0 if audio is None else duration_ms(audio)
        record = VoiceRecord("v_" + secrets.token_hex(8), name, kind, design, ref_text, length, wav is not None, time.time())
        async with self._transaction() as conn:
            await conn.execute(sa.insert(voices_table).values(**record.as_dict()))
            if wav is not None:
                await conn.execute(
                    sa.insert(audio_table).values(voice_id=record.id, content_key=content_key(wav, ref_text), sample_rate=SAMPLE_RATE, wav=wav)
                )
        return record

    async def rename(self, voice_id: str, name: str) -> VoiceRecord:
        record = await self.get(voice_id)
        async with self._transaction() as conn:
            done = await conn.execute(sa.update(voices_table).where(voices_table.c.id == record.id).values(name=_clean_name(name, record.kind)))
        if done.rowcount == 0:
            raise VoiceNotFound(f"no saved voice {voice_id[:64]!r}")
        return await self.get(voice_id)

    async def delete(self, voice_id: str) -> None:
        record = await self.get(voice_id)
        self._references.pop(record.id, None)
        async with self._transaction() as conn:
            await conn.execute(sa.delete(audio_table).where(audio_table.c.voice_id == record.id))
            done = await conn.execute(sa.delete(voices_table).where(voices_table.c.id == record.id))
        if done.rowcount == 0:
            raise VoiceNotFound(f"no saved voice {voice_id[:64]!r}")

    # --- the connection ------------------------------------------------------

    def _connected(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the voice library is not open")
        return self._engine

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        await self._ready()
        async with self._reachable(), self._connected().begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        try:
            yield
        except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise self._unreachable(exc) from exc
            raise

    def _unreachable(self, exc: BaseException) -> Unavailable:
        detail = str(getattr(exc, "orig", None) or exc).strip()
        reason = detail.splitlines()[0][:200] if detail else type(exc).__name__
        return Unavailable(f"the voice library's database ({self.where}) is unreachable: {reason}")


def _create_engine(url: str) -> AsyncEngine:
    backend = sa.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        # Other connections wait for a writer instead of failing at once.
        engine = create_async_engine(url, connect_args={"timeout": 15})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 1800}
    if backend == "postgresql":
        # A database that is down fails fast and clearly instead of hanging a voice operation.
        options["connect_args"] = {"timeout": 5, "command_timeout": 30}
    return create_async_engine(url, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the driver, begins transactions (so DDL is transactional too: see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get("sqlite_immediate")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migrations_lock() -> asyncio.Lock:
    return _migration_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _upgrade(connection: sa.Connection) -> None:
    tables = set(sa.inspect(connection).get_table_names())
    if _version_table.name in tables and connection.scalar(sa.select(_version_table.c.version_num)) == SCHEMA_REVISION:
        return
    if not tables & set(_metadata.tables):
        _metadata.create_all(connection)
        _version_table.create(connection)
        connection.execute(sa.insert(_version_table).values(version_num=SCHEMA_REVISION))
        return
    _alembic_upgrade(connection)


def _alembic_upgrade(connection: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def _insert_legacy(conn: AsyncConnection, voice: LegacyVoice) -> None:
    values = {
        "id": voice.id, "name": voice.name, "kind": voice.kind, "design": voice.design, "ref_text": voice.ref_text,
        "duration_ms": voice.duration_ms, "has_audio": voice.wav is not None, "created": voice.created,
    }  # fmt: skip
    await conn.execute(sa.insert(voices_table).values(**values))
    if voice.wav is not None:
        key = content_key(voice.wav, voice.ref_text)
        await conn.execute(sa.insert(audio_table).values(voice_id=voice.id, content_key=key, sample_rate=voice.sample_rate, wav=voice.wav))


def _decode_wav(data: bytes) -> np.ndarray:
    """A stored reference (mono 16-bit at 24 kHz) as float32."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getframerate() != SAMPLE_RATE:
            raise ValueError("a stored reference must be mono 16-bit 24 kHz WAV")
        return from_pcm_bytes(wav.readframes(wav.getnframes()), "pcm_s16le")


def _record(row: Any) -> VoiceRecord:
    return VoiceRecord(row.id, row.name, row.kind, row.design, row.ref_text, int(row.duration_ms), bool(row.has_audio), float(row.created))


def _clean_name(name: str | None, kind: str) -> str:
    name = " ".join((name or "").split())[:100]
    if not name:
        return "Designed voice" if kind == "design" else "Cloned voice"
    if not name.isprintable():
        raise BadMessage("a voice name must be printable text")
    return name
