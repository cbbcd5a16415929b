"""``hello.format: "opus"`` in-process: a session, a mock engine, its ``audio`` messages as Ogg/Opus pages.

The mock speaks ``MS_PER_CHAR`` of tone per character, so the Opus stream of
an utterance must decode to exactly the PCM the same text gives. The same
through the real server over TLS is in test_socket_opus_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.audio import SAMPLE_RATE
from server.config import Limits
from server.engines.base import SynthesisRequest
from server.engines.mock import MS_PER_CHAR, MockEngine
from server.session import Session
from server.voices import VoiceLibrary
from tests.audio_checks import decode
from tests.ogg_pages import assert_one_stream, pages
from tests.test_session import Client, kinds

TEXT = "Compressed audio for phones on a mobile network."
SAMPLES = len(TEXT) * MS_PER_CHAR * SAMPLE_RATE // 1000


@pytest.fixture
async def library(tmp_path: Path) -> AsyncIterator[VoiceLibrary]:
    voices = VoiceLibrary(tmp_path)
    await voices.open()
    yield voices
    await voices.close()


async def connect(engine: MockEngine, library: VoiceLibrary, **hello: Any) -> tuple[Session, Client, dict[str, Any]]:
    session = Session(engine=engine, library=library, limits=Limits())
    client = Client(session)
    await client.send("hello", protocol=1, **hello)
    return session, client, await client.next()


def audio_of(messages: list[dict[str, Any]], utterance_id: str) -> list[bytes]:
    return [base64.b64decode(m["data"]) for m in messages if m["type"] == "audio" and m["id"] == utterance_id]


@pytest.mark.parametrize("rate", [24000, 48000])
async def test_an_utterance_is_one_ogg_opus_stream_as_long_as_its_pcm(library: VoiceLibrary, rate: int) -> None:
    session, client, ready = await connect(MockEngine(), library, format="opus", sample_rate=rate)
    try:
        assert (ready["type"], ready["format"], ready["sample_rate"]) == ("ready", "opus", rate)
        messages = await client.speak("a", TEXT)
    finally:
        await session.close()
    assert kinds(messages) == ["audio"] * (len(messages) - 1) + ["done"]
    data = audio_of(messages, "a")
    stream = assert_one_stream(data)
    assert int.from_bytes(stream[0].body[12:16], "little") == rate  # OpusHead's input rate
    decoded, decoded_rate = decode(b"".join(data), "opus")
    assert decoded_rate == 48000 and abs(len(decoded) - 2 * SAMPLES) <= 48, (len(decoded), 2 * SAMPLES)
    assert messages[-1]["audio_ms"] == len(TEXT) * MS_PER_CHAR and messages[-1]["cancelled"] is False


async def test_opus_is_about_a_tenth_of_the_bytes_of_pcm(library: VoiceLibrary) -> None:
    sizes = {}
    for fmt in ("pcm_s16le", "opus"):
        session, client, _ = await connect(MockEngine(), library, format=fmt)
        try:
            sizes[fmt] = sum(map(len, audio_of(await client.speak("a", TEXT * 4), "a")))
        finally:
            await session.close()
    assert sizes["pcm_s16le"] == 4 * SAMPLES * 2
    assert sizes["pcm_s16le"] / sizes["opus"] > 8, sizes


async def test_each_utterance_is_its_own_stream_even_interleaved(library: VoiceLibrary) -> None:
    session, client, _ = await connect(MockEngine(), library, format="opus", sample_rate=48000)
    try:
        await client.send("speak", id="x", text=TEXT, voice={"design": "calm"})
        await client.send("speak", id="y", text=TEXT[:20], voice={"design": "calm"})
        messages = await client.until("done", id="x")
        if not any(m["type"] == "done" and m["id"] == "y" for m in messages):
            messages += await client.until("done", id="y")
        messages += await client.speak("z", "And one more.")
    finally:
        await session.close()
    serials = set()
    for utterance_id, text in (("x", TEXT), ("y", TEXT[:20]), ("z", "And one more.")):
        stream = assert_one_stream(audio_of(messages, utterance_id))
        serials.add(stream[0].serial)
        decoded, _ = decode(b"".join(audio_of(messages, utterance_id)), "opus")
        assert abs(len(decoded) - 2 * len(text) * MS_PER_CHAR * 24) <= 48
    assert len(serials) == 3


async def test_cancel_mid_utterance_ends_with_done_and_no_audio_after(library: VoiceLibrary) -> None:
    closed = asyncio.Event()

    async def endless(request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        try:
            while True:
                yield np.full(2400, 0.1, np.float32)
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    engine = MockEngine(endless)
    session, client, _ = await connect(engine, library, format="opus")
    try:
        await client.send("speak", id="c", text="Forever.", voice={"design": "calm"})
        first = await client.until("audio", id="c")
        assert pages(base64.b64decode(first[-1]["data"]))[0].body.startswith(b"OpusHead")
        await client.send("cancel", id="c")
        messages = await client.until("done", id="c")
        assert messages[-1]["cancelled"] is True
        await asyncio.wait_for(closed.wait(), 5)
        await client.send("ping", t=1)
        assert kinds(await client.until("pong")) == ["pong"]
        # The session goes on: the next utterance is a new, complete stream.
        engine.handler = MockEngine().handler
        after = await client.speak("d", "After the cancel.")
        assert kinds(after)[-1] == "done" and not any(m.get("id") == "c" for m in after)
        assert_one_stream(audio_of(after, "d"))
    finally:
        await session.close()


@pytest.mark.parametrize(("hello", "ok"), [({"format": "opus"}, True), ({"format": "opus", "sample_rate": 16000}, False),
                                            ({"format": "opus", "sample_rate": 44100}, False), ({"format": "mp3"}, False)])  # fmt: skip
async def test_hello_takes_opus_at_24_or_48_khz_only(library: VoiceLibrary, hello: dict[str, Any], ok: bool) -> None:
    session, client, reply = await connect(MockEngine(), library, **hello)
    try:
        if ok:
            assert (reply["type"], reply["format"], reply["sample_rate"]) == ("ready", "opus", 24000)
        else:
            assert (reply["type"], reply["code"], reply["fatal"]) == ("error", "bad_message", False)
            # The client may try again with a hello the server takes.
            await client.send("hello", protocol=1, format="pcm_s16le", sample_rate=16000)
            assert (await client.next())["type"] == "ready"
    finally:
        await session.close()


async def test_a_msgpack_session_gets_the_pages_as_bytes(library: VoiceLibrary) -> None:
    import msgpack

    session = Session(engine=MockEngine(), library=library, limits=Limits())
    try:
        await session.receive(msgpack.packb({"type": "hello", "protocol": 1, "format": "opus", "sample_rate": 48000}))
        await session.receive(msgpack.packb({"type": "speak", "id": "m", "text": TEXT, "voice": {"design": "calm"}}))
        data = []
        for _ in range(1000):
            frame = await asyncio.wait_for(session.outbox.next_frame(), 5)
            assert isinstance(frame, bytes)
            message = msgpack.unpackb(frame)
            if message["type"] == "audio":
                data.append(message["data"])
            if message["type"] == "done":
                break
    finally:
        await session.close()
    assert all(isinstance(d, bytes) for d in data)
    assert_one_stream(data)
    assert json.dumps(message)  # done is plain data
