"""The session in-process: a mock engine, a real voice library, no sockets.

Each case drives ``Session.receive`` with frames and reads the frames its
outbox yields, the way a transport does. What the client sees for every
request, refusal and failure is checked here in milliseconds; the end-to-end
tier (test_server.py, test_errors.py) runs the same paths through the real
server over TLS.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.audio import SAMPLE_RATE
from server.config import Limits
from server.engines.base import Reference, SynthesisRequest
from server.engines.mock import MS_PER_CHAR, MockEngine
from server.errors import Unavailable
from server.session import Session
from server.voices import VoiceLibrary

TIMEOUT_S = 5.0


class Client:
    """Frames into the session, messages out of its outbox."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.inbox: list[dict[str, Any]] = []

    async def send(self, type: str, **fields: Any) -> Any:
        return await self.session.receive(json.dumps({"type": type, **fields}))

    async def next(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.session.outbox.next_frame(), TIMEOUT_S)
        assert isinstance(frame, str)
        return json.loads(frame)

    async def until(self, type: str, **match: Any) -> list[dict[str, Any]]:
        """Messages up to and including the first of ``type`` with ``match``."""
        got = []
        for _ in range(10_000):
            message = await self.next()
            got.append(message)
            if message["type"] == type and all(message.get(k) == v for k, v in match.items()):
                return got
        raise AssertionError(f"no {type} {match}")

    async def speak(self, id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
        fields.setdefault("voice", {"design": "calm"})
        await self.send("speak", id=id, text=text, **fields)
        return await self.until("done", id=id)


@pytest.fixture
async def library(tmp_path: Path) -> AsyncIterator[VoiceLibrary]:
    voices = VoiceLibrary(tmp_path)
    await voices.open()
    yield voices
    await voices.close()


@pytest.fixture
def engine() -> MockEngine:
    return MockEngine()


@pytest.fixture
async def client(engine: MockEngine, library: VoiceLibrary) -> AsyncIterator[Client]:
    async with opened(engine, library) as c:
        yield c


class opened:  # noqa: N801 - reads as a context manager
    def __init__(self, engine: MockEngine, library: VoiceLibrary, limits: Limits | None = None, token: str | None = None) -> None:
        self.session = Session(
            engine=engine, library=library, limits=limits or Limits(), check_token=None if token is None else (lambda t: t == token)
        )
        self.token = token

    async def __aenter__(self) -> Client:
        client = Client(self.session)
        if self.token is None:
            await client.send("hello", protocol=1)
            assert (await client.next())["type"] == "ready"
        return client

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


def hold(engine: MockEngine) -> asyncio.Event:
    """Make ``engine`` wait for the returned event before each request's audio."""
    gate = asyncio.Event()

    async def held(request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        await gate.wait()
        yield np.full(2400, 0.1, np.float32)

    engine.handler = held
    return gate


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] if m["type"] != "error" else f"error:{m['code']}" for m in messages]


def pcm(messages: list[dict[str, Any]]) -> np.ndarray:
    import base64

    data = b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "audio")
    return np.frombuffer(data, dtype="<i2")


# --- speaking ----------------------------------------------------------------------------------


async def test_speak_streams_audio_then_done(client: Client, engine: MockEngine) -> None:
    messages = await client.speak("a", "Hello there.")
    assert kinds(messages) == ["audio"] * (len(messages) - 1) + ["done"]
    assert [m["seq"] for m in messages[:-1]] == list(range(len(messages) - 1))
    done = messages[-1]
    assert done["cancelled"] is False and done["ttfa_ms"] is not None and done["rtf"] is not None
    assert len(pcm(messages)) == len("Hello there.") * MS_PER_CHAR * SAMPLE_RATE // 1000
    assert done["audio_ms"] == len("Hello there.") * MS_PER_CHAR
    assert engine.requests[0].owner == client.session.id


async def test_ready_tells_the_engine_and_the_limits(engine: MockEngine, library: VoiceLibrary) -> None:
    session = Session(engine=engine, library=library, limits=Limits(max_text_chars=77))
    client = Client(session)
    await client.send("hello", protocol=1, format="pcm_f32le", sample_rate=16000)
    ready = await client.next()
    assert ready["engine"]["name"] == "mock" and ready["engine"]["state"] == "created"
    assert (ready["format"], ready["sample_rate"], ready["limits"]["max_text_chars"]) == ("pcm_f32le", 16000, 77)
    messages = await client.speak("a", "Resampled.")
    samples = sum(len(m["data"]) for m in messages if m["type"] == "audio") * 3 // 4 // 4
    assert abs(samples - len("Resampled.") * MS_PER_CHAR * 16) < 200  # f32 at 16 kHz
    await session.close()


async def test_long_text_reaches_the_engine_in_sentences_within_its_segment_size(library: VoiceLibrary) -> None:
    engine = MockEngine(segment_chars=40)
    async with opened(engine, library) as client:
        text = "First sentence here. " + "A second one, which runs on for quite a while past the size, with clauses."
        await client.speak("a", text)
    texts = [r.text for r in engine.requests]
    assert texts[0] == "First sentence here." and all(len(t) <= 40 for t in texts)
    assert " ".join(texts).split() == text.split()
    assert [r.first for r in engine.requests] == [True] + [False] * (len(texts) - 1)


async def test_markup_is_not_read_aloud_and_segments_index_the_text_as_given(engine: MockEngine, library: VoiceLibrary) -> None:
    text = '<speak><prosody rate="slow">Hello there.</prosody> Again<break time="1s"/>now.</speak>'
    client = await segmented(engine, library)
    messages = await client.speak("m", text)
    await client.session.close()
    assert [r.text for r in engine.requests] == ["Hello there.", "Again now."]
    segments = [m for m in messages if m["type"] == "segment"]
    assert [s["text"] for s in segments] == ["Hello there.", "Again now."]
    assert text[segments[0]["text_start"] : segments[0]["text_end"]] == "Hello there."
    async with opened(MockEngine(), library) as client:
        assert kinds(await client.speak("t", '<speak><break time="2s"/></speak>')) == ["error:bad_message", "done"]


async def test_streamed_text_is_spoken_sentence_by_sentence(client: Client, engine: MockEngine) -> None:
    await client.send("speak", id="s", text="", voice={"design": "calm"}, final=False)
    for word in ["One", "sentence", "here.", "Then", "another", "one"]:
        await client.send("text", id="s", text=word + " ")
    await client.send("end", id="s")
    await client.until("done", id="s")
    assert [r.text for r in engine.requests] == ["One sentence here.", "Then another one"]
    assert (await client.send("text", id="s", text="late")) is None
    assert kinds(await client.until("error")) == ["error:unknown_id"]


async def test_text_after_end_and_text_past_the_limit_leave_the_utterance_open(engine: MockEngine, library: VoiceLibrary) -> None:
    gate = hold(engine)
    async with opened(engine, library, Limits(max_text_chars=20)) as client:
        await client.send("speak", id="s", text="Hi. ", voice={"design": "calm"}, final=False)
        await client.send("text", id="s", text="x" * 30)
        assert (await client.next())["code"] == "limit"
        await client.send("end", id="s")
        await client.send("text", id="s", text="more")
        error = await client.next()
        assert (error["code"], error["id"]) == ("bad_message", "s")
        gate.set()
        messages = await client.until("done", id="s")
        assert messages[-1]["cancelled"] is False


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"text": "x" * 101}, "limit"),
        ({"text": "   "}, "bad_message"),
        ({"text": "... — ?!"}, "bad_message"),
        ({"text": "Hallo.", "language": "klingon"}, "unavailable"),
        ({"text": "Hi.", "voice": {"voice_id": "v_0000000000000000"}}, "voice_not_found"),
        ({"text": "Hi.", "voice": {"voice_id": "../../etc/passwd"}}, "voice_not_found"),
    ],
)
async def test_refused_speaks_get_error_then_done(engine: MockEngine, library: VoiceLibrary, fields: dict[str, Any], code: str) -> None:
    async with opened(engine, library, Limits(max_text_chars=100)) as client:
        messages = await client.speak("r", **fields)
    assert kinds(messages) == [f"error:{code}", "done"] and messages[0]["id"] == "r"
    assert messages[1] == {"type": "done", "id": "r", "cancelled": True, "audio_ms": 0, "ttfa_ms": None, "rtf": None}
    assert engine.requests == []


async def test_capabilities_the_engine_lacks_are_unavailable(library: VoiceLibrary) -> None:
    async with opened(MockEngine(design=False, clone=False), library) as client:
        assert kinds(await client.speak("d", "Hi.")) == ["error:unavailable", "done"]
        await client.send("voice_begin", ref="r")
        assert kinds([await client.next()]) == ["error:unavailable"]


async def test_too_many_open_utterances(engine: MockEngine, library: VoiceLibrary) -> None:
    gate = hold(engine)
    async with opened(engine, library, Limits(max_open_utterances=1)) as client:
        await client.send("speak", id="a", text="Busy.", voice={"design": "calm"})
        assert kinds(await client.speak("b", "Too many.")) == ["error:limit", "done"]
        gate.set()
        assert (await client.until("done", id="a"))[-1]["cancelled"] is False


async def test_duplicate_id_gets_an_error_and_the_open_utterance_goes_on(engine: MockEngine, library: VoiceLibrary) -> None:
    gate = hold(engine)
    async with opened(engine, library) as client:
        await client.send("speak", id="same", text="First.", voice={"design": "calm"})
        await client.send("speak", id="same", text="Again.", voice={"design": "calm"})
        error = await client.next()
        assert (error["code"], error["id"]) == ("duplicate_id", "same")
        gate.set()
        messages = await client.until("done", id="same")
        assert kinds(messages) == ["audio", "done"] and not messages[-1]["cancelled"]
        assert len(engine.requests) == 1


async def test_cancel_stops_the_engine_and_no_audio_follows_done(engine: MockEngine, library: VoiceLibrary) -> None:
    closed = asyncio.Event()

    async def endless(request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        try:
            while True:
                yield np.ones(2400, np.float32) * 0.1
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    engine.handler = endless
    async with opened(engine, library) as client:
        await client.send("speak", id="c", text="Forever.", voice={"design": "calm"})
        await client.until("audio", id="c")
        await client.send("cancel", id="c")
        messages = await client.until("done", id="c")
        assert messages[-1]["cancelled"] is True
        await asyncio.wait_for(closed.wait(), TIMEOUT_S)
        await client.send("ping", t=1)
        assert kinds(await client.until("pong")) == ["pong"]


async def test_an_engine_failure_mid_stream_is_audio_error_done(engine: MockEngine, library: VoiceLibrary) -> None:
    def failing(request: SynthesisRequest) -> Iterator[np.ndarray]:
        yield np.ones(2400, np.float32) * 0.1
        raise Unavailable("the engine is shutting down")

    engine.handler = failing
    async with opened(engine, library) as client:
        messages = await client.speak("f", "Doomed.")
    assert kinds(messages)[-2:] == ["error:unavailable", "done"] and messages[-1]["cancelled"] is True


async def test_a_bug_in_the_engine_is_an_engine_error_and_the_session_goes_on(engine: MockEngine, library: VoiceLibrary) -> None:
    def buggy(request: SynthesisRequest) -> list[np.ndarray]:
        raise ZeroDivisionError("oops")

    engine.handler = buggy
    async with opened(engine, library) as client:
        assert kinds(await client.speak("b", "Hi.")) == ["error:engine_error", "done"]
        engine.handler = lambda r: [np.ones(2400, np.float32) * 0.1]
        assert kinds(await client.speak("ok", "Hi."))[-1] == "done"


async def test_an_engine_that_makes_no_audio_gets_nothing_to_say(engine: MockEngine, library: VoiceLibrary) -> None:
    engine.handler = lambda r: []
    async with opened(engine, library) as client:
        assert kinds(await client.speak("n", "Hello.")) == ["error:bad_message", "done"]


async def test_closing_the_session_closes_every_engine_stream(engine: MockEngine, library: VoiceLibrary) -> None:
    closed: list[str] = []

    async def endless(request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        try:
            while True:
                yield np.full(240, 0.1, np.float32)
                await asyncio.sleep(0.001)
        finally:
            closed.append(request.text)

    engine.handler = endless
    async with opened(engine, library) as client:
        for i in range(3):
            await client.send("speak", id=str(i), text=f"Utterance {i}.", voice={"design": "calm"})
        await client.until("audio", id="2")
    assert sorted(closed) == ["Utterance 0.", "Utterance 1.", "Utterance 2."]
    assert len(client.session.utterances) == 0


# --- errors and pings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{broken json", "bad_message"),
        (json.dumps({"type": "speak", "id": "x", "text": "hi"}), "bad_message"),
        (json.dumps({"type": "hum"}), "unknown_type"),
        (json.dumps({"type": "cancel", "id": "nope"}), "unknown_id"),
        (json.dumps({"type": "text", "id": "nope", "text": "x"}), "unknown_id"),
        (json.dumps({"type": "end", "id": "nope"}), "unknown_id"),
        (json.dumps({"type": "voice_chunk", "ref": "nope", "data": ""}), "unknown_id"),
        (json.dumps({"type": "voice_end", "ref": "nope"}), "unknown_id"),
        (json.dumps({"type": "hello", "protocol": 1}), "bad_message"),
    ],
)
async def test_bad_frames_get_an_error_and_the_session_goes_on(client: Client, frame: str, code: str) -> None:
    assert await client.session.receive(frame) is None
    error = await client.next()
    assert (error["type"], error["code"], error["fatal"]) == ("error", code, False) and error["message"]
    assert kinds(await client.speak("ok", "Still speaking.")) [-1] == "done"


async def test_a_message_before_hello_is_not_ready(engine: MockEngine, library: VoiceLibrary) -> None:
    session = Session(engine=engine, library=library, limits=Limits())
    client = Client(session)
    await client.send("speak", id="a", text="hi", voice={"design": "x"})
    error = await client.next()
    assert (error["code"], error["id"]) == ("not_ready", "a")
    await client.send("hello", protocol=1)
    assert (await client.next())["type"] == "ready"
    await session.close()


async def test_a_wrong_token_in_hello_is_fatal(engine: MockEngine, library: VoiceLibrary) -> None:
    async with opened(engine, library, token="s3cret") as client:
        fatal = await client.send("hello", protocol=1, token="wrong")
        assert fatal is not None and fatal.close_code == 1008
        assert (await client.next())["code"] == "unauthorized"
    async with opened(engine, library, token="s3cret") as client:
        assert await client.send("hello", protocol=1, token="s3cret") is None
        assert (await client.next())["type"] == "ready" and client.session.ready


async def test_ping_echoes_t(client: Client) -> None:
    await client.send("ping", t="x1")
    assert await client.next() == {"type": "pong", "t": "x1"}
    await client.send("ping")
    assert await client.next() == {"type": "pong", "t": None}


async def test_a_client_that_stops_reading_is_cut_off_with_bounded_memory(engine: MockEngine, library: VoiceLibrary) -> None:
    from server.protocol import QueueLimits

    async with opened(engine, library, Limits(queue=QueueLimits(max_frames=50, max_bytes=20_000))) as client:
        fatal = None
        for _ in range(200):
            fatal = await client.send("ping", t="p" * 200)
            if fatal is not None:
                break
        assert fatal is not None and fatal.code == "limit" and fatal.close_code == 1008
        assert client.session.connection.queued_bytes == 0
        with pytest.raises(type(fatal)):
            await client.session.outbox.next_frame()


# --- uploads ----------------------------------------------------------------------------------


def speech_wav(seconds: float = 3.0) -> bytes:
    """A voiced, syllable-like tone: enough for the reference checks."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    audio = 0.4 * envelope * (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)) / 1.5
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((audio * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


async def upload(client: Client, ref: str, data: bytes, pieces: int = 8) -> list[dict[str, Any]]:
    import base64

    await client.send("voice_begin", ref=ref, name="Me", ref_text="what I said")
    step = len(data) // pieces + 1
    for start in range(0, len(data), step):
        await client.send("voice_chunk", ref=ref, data=base64.b64encode(data[start : start + step]).decode())
    await client.send("voice_end", ref=ref)
    return await client.until("voice")


async def test_an_upload_becomes_a_voice_that_speaks(client: Client, engine: MockEngine, library: VoiceLibrary) -> None:
    messages = await upload(client, "r", speech_wav())
    assert kinds(messages)[-1] == "voice" and "progress" in kinds(messages)
    voice = messages[-1]
    assert voice["ref"] == "r" and voice["name"] == "Me" and 2000 < voice["duration_ms"] <= 3000
    record = await library.get(voice["voice_id"])
    assert record.kind == "clone" and record.ref_text == "what I said"
    await client.speak("c", "In my voice.", voice={"voice_id": voice["voice_id"]})
    reference = engine.requests[-1].voice.reference
    assert isinstance(reference, Reference) and reference.text == "what I said"


async def test_a_corrupt_upload_is_refused_once_and_its_later_chunks_answered_once(client: Client) -> None:
    import base64

    junk = base64.b64encode(b"this is not audio at all" * 200).decode()
    await client.send("voice_begin", ref="j")
    await client.send("voice_chunk", ref="j", data=junk)
    for _ in range(5):
        await client.send("voice_chunk", ref="j", data=junk)
    await client.send("voice_end", ref="j")
    await client.send("ping", t="after")
    messages = await client.until("pong")
    assert kinds(messages) == ["error:unsupported_audio", "error:unknown_id", "pong"]
    assert all(m.get("ref") == "j" for m in messages[:2])


@pytest.mark.parametrize(
    ("begin", "code"),
    [
        ({"source": "rtc"}, "bad_message"),
        ({"source": "fax"}, "bad_message"),
    ],
)
async def test_upload_sources_must_be_registered(client: Client, begin: dict[str, Any], code: str) -> None:
    await client.send("voice_begin", ref="s", **begin)
    error = await client.next()
    assert (error["code"], error["ref"]) == (code, "s")


async def test_upload_limits_and_duplicates(engine: MockEngine, library: VoiceLibrary) -> None:
    async with opened(engine, library, Limits(max_uploads=1)) as client:
        await client.send("voice_begin", ref="a")
        await client.send("voice_begin", ref="a")
        await client.send("voice_begin", ref="b")
        assert kinds([await client.next(), await client.next()]) == ["error:duplicate_id", "error:limit"]


# --- flush and segment timing (additions to v1) ---------------------------------------------


async def segmented(engine: MockEngine, library: VoiceLibrary) -> Client:
    session = Session(engine=engine, library=library, limits=Limits())
    client = Client(session)
    await client.send("hello", protocol=1, segments=True)
    assert (await client.next())["type"] == "ready"
    return client


async def test_segments_say_which_text_each_audio_speaks_and_where_it_starts(engine: MockEngine, library: VoiceLibrary) -> None:
    client = await segmented(engine, library)
    text = "First sentence. Second one here."
    messages = await client.speak("t", text)
    segments = [m for m in messages if m["type"] == "segment"]
    assert [(m["index"], m["text"]) for m in segments] == [(0, "First sentence."), (1, "Second one here.")]
    assert all(text[m["text_start"] : m["text_end"]] == m["text"] for m in segments)
    # The second starts where the first's audio ends: the mock makes MS_PER_CHAR per character.
    assert [m["audio_ms"] for m in segments] == [0, len("First sentence.") * MS_PER_CHAR]
    first_audio = next(i for i, m in enumerate(messages) if m["type"] == "audio")
    assert messages.index(segments[0]) < first_audio
    await client.session.close()


async def test_segments_are_only_for_clients_that_ask(client: Client) -> None:
    assert "segment" not in kinds(await client.speak("t", "One. Two."))


async def test_streamed_offsets_index_all_the_text_given(engine: MockEngine, library: VoiceLibrary) -> None:
    client = await segmented(engine, library)
    parts = ["Hello ", "there. ", "How are ", "you today?"]
    await client.send("speak", id="s", text=parts[0], voice={"design": "calm"}, final=False)
    for part in parts[1:]:
        await client.send("text", id="s", text=part)
    await client.send("end", id="s")
    segments = [m for m in await client.until("done", id="s") if m["type"] == "segment"]
    given = "".join(parts)
    assert [given[m["text_start"] : m["text_end"]] for m in segments] == ["Hello there.", "How are you today?"]
    await client.session.close()


async def test_flush_speaks_what_is_buffered_and_answers_after_its_audio(client: Client, engine: MockEngine) -> None:
    await client.send("speak", id="f", text="", voice={"design": "calm"}, final=False)
    await client.send("text", id="f", text="no sentence end yet")
    await client.send("flush", id="f")
    before = await client.until("flushed", id="f")
    assert kinds(before) == ["audio"] * (len(before) - 1) + ["flushed"]
    assert engine.requests[-1].text == "no sentence end yet"
    await client.send("text", id="f", text=" and more.")
    await client.send("end", id="f")
    after = await client.until("done", id="f")
    assert kinds(after)[-1] == "done" and "audio" in kinds(after) and engine.requests[-1].text == "and more."


async def test_flush_after_end_is_answered_before_done(client: Client) -> None:
    await client.send("speak", id="e", text="All of it.", voice={"design": "calm"})
    await client.send("flush", id="e")
    messages = await client.until("done", id="e")
    assert kinds(messages)[-2:] == ["flushed", "done"]
    await client.send("flush", id="e")
    assert kinds([await client.next()]) == ["error:unknown_id"]


async def test_a_cancel_that_comes_before_the_utterance_starts_still_ends_it(client: Client) -> None:
    for i in range(12):  # more than max_open_utterances: a lost cancel would use up the session
        await client.send("speak", id=f"c{i}", text="", voice={"design": "calm"}, final=False)
        await client.send("cancel", id=f"c{i}")  # no await point between: the task has not run
        done = (await client.until("done", id=f"c{i}"))[-1]
        assert done["cancelled"] is True
    assert len(client.session.utterances) == 0
    assert kinds(await client.speak("ok", "Still room."))[-1] == "done"
