"""The voice library on SQLAlchemy: SQLite and a real PostgreSQL, the import of the earlier layout, outages."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from client import ServerError
from server import voices
from server.audio import read_wav, resample
from server.errors import Unavailable, VoiceNotFound
from server.voices import VoiceLibrary, VoiceRecord, content_key, default_url
from tests.audio_checks import assert_speech
from tests.conftest import ROOT
from tests.legacy_voices import LegacyVoiceLibrary
from tests.postgres import PostgresServer


def tone(seconds: float, hz: float = 180.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(24000 * seconds)) / 24000
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.3 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None (SQLite in the data dir, the default) or a fresh database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


@pytest.fixture
async def library(tmp_path: Path, database_url: str | None) -> AsyncIterator[VoiceLibrary]:
    opened = VoiceLibrary(tmp_path / "data", database_url)
    await opened.open()
    yield opened
    await opened.close()


async def test_save_read_rename_delete(library: VoiceLibrary, tmp_path: Path) -> None:
    audio = tone(2.0)
    clone = await library.save(name="  Me  ", kind="clone", audio=audio, ref_text="hello there")
    design = await library.save(name="", kind="design", design="a calm narrator")
    assert clone.name == "Me" and clone.has_audio and clone.duration_ms == 2000
    assert design.name == "Designed voice" and not design.has_audio
    assert [v.id for v in await library.all()] == [clone.id, design.id]
    assert await library.get(clone.id) == clone

    wav = await library.audio(clone)
    assert wav is not None and await library.audio(design) is None
    with wave.open(io.BytesIO(wav)) as parsed:
        assert (parsed.getframerate(), parsed.getnchannels(), parsed.getnframes()) == (24000, 1, len(audio))
    reference = await library.reference(clone)
    assert reference is not None and reference.text == "hello there"
    assert reference.key == content_key(wav, "hello there")
    np.testing.assert_allclose(reference.audio, audio, atol=1 / 32767)
    assert await library.reference(design) is None

    assert (await library.rename(clone.id, "Renamed")).name == "Renamed"
    await library.delete(clone.id)
    with pytest.raises(VoiceNotFound):
        await library.get(clone.id)
    with pytest.raises(VoiceNotFound):
        await library.rename(clone.id, "x")
    with pytest.raises(VoiceNotFound):
        await library.get("../../etc/passwd")
    assert [v.id for v in await library.all()] == [design.id]


async def test_content_key_is_the_same_on_every_front(tmp_path: Path, database_url: str | None) -> None:
    """Two libraries on one database (two fronts) agree on ids, audio and the key engines cache by."""
    first, second = VoiceLibrary(tmp_path / "a", database_url), VoiceLibrary(tmp_path / "a", database_url)
    await asyncio.gather(first.open(), second.open())  # concurrent first starts migrate one after the other
    try:
        saved = await first.save(name="Shared", kind="clone", audio=tone(1.0), ref_text="one")
        twin = await first.save(name="Twin", kind="clone", audio=tone(1.0), ref_text="two")
        seen = await second.get(saved.id)
        ref_first, ref_second = await first.reference(saved), await second.reference(seen)
        assert ref_first is not None and ref_second is not None and ref_first.key == ref_second.key
        other = await second.reference(twin)
        assert other is not None and other.key != ref_first.key  # same audio, other text: another prompt
        await second.rename(saved.id, "Renamed elsewhere")
        assert (await first.get(saved.id)).name == "Renamed elsewhere"
        await first.delete(saved.id)
        with pytest.raises(VoiceNotFound):
            await second.get(saved.id)
    finally:
        await first.close()
        await second.close()


async def on_connection(url: str, work: Callable[[sa.Connection], Any]) -> Any:
    """``work`` on a synchronous connection to ``url``, in one transaction."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


async def test_schema_is_alembics_head(library: VoiceLibrary) -> None:
    version = await on_connection(library.url, lambda conn: conn.scalar(sa.text("SELECT version_num FROM alembic_version")))
    tables = await on_connection(library.url, lambda conn: set(sa.inspect(conn).get_table_names()))
    assert version == "0001"
    assert {"voices", "voice_audio", "imported_libraries", "alembic_version"} <= tables


def schema(conn: sa.Connection) -> dict[str, Any]:
    """Everything the database says of its tables, in a form that compares."""
    inspector = sa.inspect(conn)
    found: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        found[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in inspector.get_columns(table)],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign keys": [(k["constrained_columns"], k["referred_table"], k["referred_columns"], k.get("options")) for k in inspector.get_foreign_keys(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
            "checks": sorted((c["name"], " ".join(c["sqltext"].split())) for c in inspector.get_check_constraints(table)),
        }  # fmt: skip
    if conn.dialect.name == "sqlite":  # SQLite keeps each CREATE statement as it was given
        found["statements"] = sorted(tuple(row) for row in conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    return found


async def test_a_new_database_is_made_as_the_migrations_make_it(tmp_path: Path, database_url: str | None, request: pytest.FixtureRequest) -> None:
    made = VoiceLibrary(tmp_path / "made", database_url)  # the library's own way: its tables, stamped
    await made.open()
    await made.close()
    if database_url is None:
        (tmp_path / "migrated").mkdir()
        migrated = default_url(tmp_path / "migrated")
    else:
        migrated = request.getfixturevalue("postgres").database()
    await on_connection(migrated, voices._alembic_upgrade)  # Alembic's way: every migration in turn
    assert await on_connection(made.url, schema) == await on_connection(migrated, schema)

    await on_connection(made.url, voices._alembic_upgrade)  # Alembic finds it at its head: nothing to do
    assert await on_connection(made.url, schema) == await on_connection(migrated, schema)


def test_the_stamp_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(voices.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == voices.SCHEMA_REVISION


def test_a_library_is_made_and_reopened_without_loading_alembic(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from server.voices import VoiceLibrary\n"
        "async def main():\n"
        "    for _ in range(2):  # made, then reopened at its head\n"
        "        library = VoiceLibrary(Path(sys.argv[1]))\n"
        "        await library.open()\n"
        "        await library.save(name='x', kind='design', design='a calm voice')\n"
        "        saved = await library.all()\n"
        "        await library.close()\n"
        "    print(len(saved), 'alembic' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False"]


def files_digest(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data_dir.rglob("*")) if p.is_file()}


async def make_legacy_library(data_dir: Path, speech_wav: Path) -> list[Any]:
    """A library of today's layout, written by today's code: clones, designs (with and without audio), a rename, a delete."""
    old = LegacyVoiceLibrary(data_dir)
    await old.open()
    try:
        speech = resample(read_wav(speech_wav), 22050, 24000)  # espeak-ng speaks at 22.05 kHz
        clone = await old.save(name="Birch", kind="clone", audio=speech, ref_text="The birch canoe slid on the smooth planks.")
        await old.save(name="No text", kind="clone", audio=tone(3.0, seed=2))
        await old.save(name="Pirate", kind="design", design="a deep gravelly pirate")
        await old.save(name="Rendered", kind="design", design="a bright voice", audio=tone(1.5, 300.0), ref_text="Hello.")
        gone = await old.save(name="Gone", kind="design", design="deleted before the upgrade")
        await old.rename(clone.id, "Birch (renamed)")
        await old.delete(gone.id)
        return await old.all()
    finally:
        await old.close()


def as_compared(record: Any) -> tuple[Any, ...]:
    return (record.id, record.name, record.kind, record.design, record.ref_text, record.duration_ms, record.has_audio, record.created)


async def test_earlier_library_is_imported_once_with_nothing_lost(tmp_path: Path, database_url: str | None, speech_wav: Path) -> None:
    data_dir = tmp_path / "data"
    before = await make_legacy_library(data_dir, speech_wav)
    assert len(before) == 4
    files_before = files_digest(data_dir)

    library = VoiceLibrary(data_dir, database_url)
    await library.open()
    try:
        after = await library.all()
        assert [as_compared(r) for r in after] == [as_compared(r) for r in before]
        for record in after:
            wav = await library.audio(record)
            path = data_dir / "voices" / record.id / "reference.wav"
            assert wav == (path.read_bytes() if record.has_audio else None)
            reference = await library.reference(record)
            if record.has_audio:
                assert reference is not None and reference.text == record.ref_text
                np.testing.assert_array_equal(reference.audio, read_wav(path))
        kept = after[0]
        await library.delete(after[1].id)
    finally:
        await library.close()
    # The earlier files are as they were (the old server still runs on them)...
    files_after = {k: v for k, v in files_digest(data_dir).items() if not k.startswith("library.sqlite3")}
    assert {k: v for k, v in files_before.items() if not k.startswith("voices.sqlite3")} == {
        k: v for k, v in files_after.items() if not k.startswith("voices.sqlite3")
    }
    # ...and the import happens once: a voice deleted since stays deleted.
    again = VoiceLibrary(data_dir, database_url)
    await again.open()
    try:
        ids = [r.id for r in await again.all()]
        assert ids == [r.id for r in before if r.id != after[1].id] and kept.id in ids
    finally:
        await again.close()


async def test_unreachable_database_is_unavailable_then_recovers(postgres_factory: Any, tmp_path: Path) -> None:
    """A PostgreSQL server of the test's own: stopped under an open library, then started again."""
    own = postgres_factory().start()
    own.psql("CREATE DATABASE lib")
    library = VoiceLibrary(tmp_path / "data", own.url("lib"))
    await library.open()
    try:
        saved = await library.save(name="Kept", kind="design", design="a calm voice")
        own.stop()
        with pytest.raises(Unavailable, match="database .* is unreachable"):
            await library.all()
        with pytest.raises(Unavailable, match="postgresql"):
            await library.save(name="Lost", kind="design", design="x")
        own.start()
        assert [v.id for v in await library.all()] == [saved.id]
    finally:
        await library.close()


async def test_library_opens_while_the_database_is_down(postgres_factory: Any, tmp_path: Path) -> None:
    """A front starts with its database down; voice operations fail clearly until it is there, then migrate."""
    own = postgres_factory()
    library = VoiceLibrary(tmp_path / "data", own.url("postgres"))
    await library.open()
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await library.get("v_0000000000000000")
        own.start()
        record: VoiceRecord = await library.save(name="Late", kind="design", design="a late voice")
        assert (await library.get(record.id)).name == "Late"
    finally:
        await library.close()


async def test_two_fronts_share_one_postgres_library(server_factory: Any, postgres_factory: Any, speech_wav: Path) -> None:
    """Clone through front A, speak with that voice through front B; then the database goes away and comes back."""
    own = postgres_factory().start()
    url = own.url("postgres")
    front_a, front_b = server_factory("--database-url", url), server_factory("--database-url", url)
    async with await front_a.client() as client:
        cloned = await client.upload_voice(speech_wav.read_bytes(), name="Birch", ref_text="The birch canoe slid on the smooth planks.")
    async with await front_b.client() as client:
        speech = await client.say("Spoken by the other front.", voice_id=cloned["voice_id"])
    assert_speech(speech.pcm(), 24000, "Spoken by the other front.")
    with front_b.http() as http:
        assert cloned["voice_id"] in {v["id"] for v in http.get("/v1/voices").json()["voices"]}
        audio = http.get(f"/v1/voices/{cloned['voice_id']}/audio")
        assert audio.status_code == 200 and audio.content[:4] == b"RIFF"

    own.stop()
    with front_a.http() as http:
        down = http.get("/v1/voices")
        assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
        assert "database" in down.json()["error"]["message"]
    async with await front_b.client() as client:
        with pytest.raises(ServerError) as refused:
            await client.say("Saved voices wait for the database.", voice_id=cloned["voice_id"])
        assert refused.value.code == "unavailable" and "database" in refused.value.message
        designed = await client.say("Designed voices keep speaking.", design="a calm narrator")
    assert_speech(designed.pcm(), 24000, "Designed voices keep speaking.")

    own.start()
    async with await front_b.client() as client:
        again = await client.say("The database is back.", voice_id=cloned["voice_id"])
    assert_speech(again.pcm(), 24000, "The database is back.")
