"""OpenAI's ``POST /v1/audio/speech`` in-process: Starlette's TestClient (or raw ASGI) and a mock engine.

The mock speaks a 220 Hz tone of ``MS_PER_CHAR`` per character, so every
format's length is known to the sample. The same requests through the real
server, with the real ``openai`` SDK and the agent frameworks' plugins, are in
test_openai_sdk.py and test_openai_plugins.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.testclient import TestClient

from server.app import create_app
from server.audio import SAMPLE_RATE
from server.config import Limits, Settings
from server.engines.base import SynthesisRequest
from server.engines.mock import MS_PER_CHAR, MockEngine
from server.errors import Unavailable
from server.openai_speech import STOCK_VOICES
from tests.audio_checks import CONTAINERS, container_of, decode
from tests.test_session import speech_wav

TEXT = "Hello over HTTP."
SAMPLES = len(TEXT) * MS_PER_CHAR * SAMPLE_RATE // 1000
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
# What a codec may add at the end, in 24 kHz samples: its priming and last frame's padding.
PADDING = {"mp3": 3 * 576 + 1152, "aac": 3 * 1024 + 64}


def settings(tmp_path: Path, **limits: Any) -> Settings:
    return Settings(host="127.0.0.1", data_dir=tmp_path / "data", certs_dir=tmp_path / "certs", limits=Limits(max_text_chars=200, **limits))


@pytest.fixture
def engine() -> MockEngine:
    return MockEngine()


@pytest.fixture
def http(tmp_path: Path, engine: MockEngine) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path), engine=engine), base_url="https://testserver") as client:
        yield client


def decoded_at_24k(data: bytes, fmt: str) -> np.ndarray:
    samples, rate = decode(data, fmt)
    if rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    return samples


def assert_tone(samples: np.ndarray, expected: int, fmt: str) -> None:
    """As long as the text's tone (within a codec's padding), and the tone is there."""
    assert expected - SAMPLE_RATE // 100 <= len(samples) <= expected + PADDING.get(fmt, SAMPLE_RATE // 100), (fmt, len(samples), expected)
    body = samples[len(samples) // 4 : len(samples) * 3 // 4]
    assert 0.15 < float(np.sqrt(np.mean(body**2))) < 0.3, fmt  # the 0.3 tone's RMS is 0.21
    spectrum = np.abs(np.fft.rfft(body))
    assert abs(np.fft.rfftfreq(len(body), 1 / SAMPLE_RATE)[np.argmax(spectrum)] - 220) < 10, fmt


# --- formats, speed, SSE ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_back_to_the_whole_utterance(http: TestClient, fmt: str) -> None:
    response = http.post("/v1/audio/speech", json={"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy", "response_format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == TYPES[fmt]
    if fmt != "pcm":
        assert container_of(response.content) == CONTAINERS[fmt]
    assert_tone(decoded_at_24k(response.content, fmt), SAMPLES, fmt)


def test_mp3_when_no_format_is_asked_for(http: TestClient) -> None:
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alloy"})
    assert response.headers["content-type"] == "audio/mpeg" and container_of(response.content) == "mp3"


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2, 4])
def test_speed_stretches_the_audio_and_keeps_its_pitch(http: TestClient, speed: float) -> None:
    response = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": "pcm", "speed": speed})
    assert response.status_code == 200
    samples = np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768
    assert len(samples) == round(SAMPLES / speed)
    assert_tone(samples, round(SAMPLES / speed), "pcm")


def test_speed_applies_to_compressed_formats_too(http: TestClient) -> None:
    response = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": "opus", "speed": 0.5})
    assert_tone(decoded_at_24k(response.content, "opus"), 2 * SAMPLES, "opus")


def sse_events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(json.loads(block[6:]))
    return events


@pytest.mark.parametrize("fmt", ["mp3", "pcm", "opus"])
def test_sse_sends_audio_deltas_then_done_with_usage(http: TestClient, fmt: str) -> None:
    response = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": fmt, "stream_format": "sse"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_tone(decoded_at_24k(audio, fmt), SAMPLES, fmt)
    usage = events[-1]["usage"]
    assert usage == {"input_tokens": len(TEXT), "output_tokens": -(-SAMPLES // (SAMPLE_RATE * 80 // 1000)), "total_tokens": len(TEXT) + usage["output_tokens"]}


def test_a_failure_after_the_first_audio_is_an_sse_error_event(http: TestClient, engine: MockEngine) -> None:
    def failing(request: SynthesisRequest) -> Iterator[np.ndarray]:
        yield np.full(2400, 0.1, np.float32)
        raise Unavailable("the engine is shutting down")

    engine.handler = failing
    response = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": "pcm", "stream_format": "sse"})
    events = sse_events(response.content)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1] == {"type": "error", "error": {"message": "the engine is shutting down", "type": "server_error", "param": None, "code": "unavailable"}}


# --- voices ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STOCK_VOICES))
def test_every_stock_voice_is_a_design(http: TestClient, engine: MockEngine, name: str) -> None:
    assert http.post("/v1/audio/speech", json={"input": TEXT, "voice": name, "response_format": "pcm"}).status_code == 200
    assert engine.requests[-1].voice.design == STOCK_VOICES[name]


def test_voice_forms_saved_name_id_object_and_instructions(http: TestClient, engine: MockEngine) -> None:
    saved = http.post("/v1/voices", files={"file": ("me.wav", speech_wav(), "audio/wav")}, data={"name": "Me"}).json()
    for voice in ["Me", saved["id"], {"id": saved["id"]}]:
        response = http.post("/v1/audio/speech", json={"input": TEXT, "voice": voice, "response_format": "pcm"})
        assert response.status_code == 200, (voice, response.text)
        assert engine.requests[-1].voice.voice_id == saved["id"] and engine.requests[-1].voice.reference is not None
    # instructions alone design the voice (the old form, voice omitted); with a stock voice they refine it.
    http.post("/v1/audio/speech", json={"input": TEXT, "instructions": "calm", "response_format": "pcm"})
    assert engine.requests[-1].voice.design == "calm"
    http.post("/v1/audio/speech", json={"input": TEXT, "voice": "onyx", "instructions": "Whisper.", "response_format": "pcm"})
    assert engine.requests[-1].voice.design == STOCK_VOICES["onyx"] + " Whisper."
    # A saved voice named like a stock one is the saved one.
    http.patch(f"/v1/voices/{saved['id']}", json={"name": "alloy"})
    http.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": "pcm"})
    assert engine.requests[-1].voice.voice_id == saved["id"]


def test_the_language_extension_reaches_the_engine(http: TestClient, engine: MockEngine) -> None:
    http.post("/v1/audio/speech", json={"input": "Guten Tag.", "voice": "alloy", "language": "de", "response_format": "wav"})
    assert engine.requests[-1].language == "de"


# --- refusals: a 4xx before any byte, in OpenAI's error shape --------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"voice": "alloy"}, 400, "bad_message", "input"),
        ({"input": 5, "voice": "alloy"}, 400, "bad_message", "input"),
        ({"input": "hi"}, 400, "bad_message", "voice"),
        ({"input": "hi", "voice": 7}, 400, "bad_message", "voice"),
        ({"input": "hi", "voice": {"name": "x"}}, 400, "bad_message", "voice"),
        ({"input": "hi", "voice": "nobody-saved-this"}, 404, "voice_not_found", "voice"),
        ({"input": "hi", "voice": {"id": "v_0000000000000000"}}, 404, "voice_not_found", "voice"),
        ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, 400, "bad_message", "response_format"),
        ({"input": "hi", "voice": "alloy", "stream_format": "chunks"}, 400, "bad_message", "stream_format"),
        ({"input": "hi", "voice": "alloy", "speed": 0.2}, 400, "bad_message", "speed"),
        ({"input": "hi", "voice": "alloy", "speed": 4.5}, 400, "bad_message", "speed"),
        ({"input": "hi", "voice": "alloy", "speed": "fast"}, 400, "bad_message", "speed"),
        ({"input": "hi", "voice": "alloy", "speed": True}, 400, "bad_message", "speed"),
        ({"input": "hi", "voice": "alloy", "model": 3}, 400, "bad_message", "model"),
        ({"input": "hi", "voice": "alloy", "instructions": ["calm"]}, 400, "bad_message", "instructions"),
        ({"input": "x" * 201, "voice": "alloy"}, 429, "limit", None),
        ({"input": "   ", "voice": "alloy"}, 400, "bad_message", None),
        ({"input": "... !? —", "voice": "alloy"}, 400, "bad_message", None),
        ({"input": "Hallo.", "voice": "alloy", "language": "klingon"}, 400, "unavailable", None),
    ],
)
def test_refusals_are_4xx_in_openais_shape(http: TestClient, engine: MockEngine, body: dict[str, object], status: int, code: str, param: str | None) -> None:
    response = http.post("/v1/audio/speech", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error") and error["message"]
    assert engine.requests == []


def test_instructions_cannot_restyle_a_saved_voice(http: TestClient) -> None:
    saved = http.post("/v1/voices", json={"name": "Pirate", "design": "a gravelly pirate"}).json()
    response = http.post("/v1/audio/speech", json={"input": "Ahoy.", "voice": saved["id"], "instructions": "cheerful"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "instructions"


def test_a_body_that_is_not_a_json_object(http: TestClient) -> None:
    for content in (b"{broken", b"[1, 2]"):
        response = http.post("/v1/audio/speech", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_message"
    huge = http.post("/v1/audio/speech", content=b" " * (1 << 20 + 1), headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"


def test_an_engine_that_makes_no_audio_is_a_400_not_an_empty_200(http: TestClient, engine: MockEngine) -> None:
    engine.handler = lambda request: []
    response = http.post("/v1/audio/speech", json={"input": "Hello.", "voice": "alloy"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_message"


@pytest.mark.parametrize(("failure", "status", "code"), [(Unavailable("shutting down"), 503, "unavailable"), (ZeroDivisionError(), 500, "engine_error")])
def test_an_engine_failure_before_audio_is_an_error_status(http: TestClient, engine: MockEngine, failure: Exception, status: int, code: str) -> None:
    def failing(request: SynthesisRequest) -> list[np.ndarray]:
        raise failure

    engine.handler = failing
    response = http.post("/v1/audio/speech", json={"input": "Hello.", "voice": "alloy"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["type"] == "server_error"


def test_a_token_is_required_where_the_server_requires_one(tmp_path: Path, engine: MockEngine) -> None:
    app = create_app(Settings(host="127.0.0.1", data_dir=tmp_path / "d", certs_dir=tmp_path / "c", token="s3cret"), engine=engine)
    with TestClient(app, base_url="https://testserver") as client:
        refused = client.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        allowed = client.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy"}, headers={"authorization": "Bearer s3cret"})
        assert allowed.status_code == 200


# --- streaming, raw ASGI: what is sent before the engine has finished ------------------------------


class AsgiRequest:
    """One POST to the app, driven by hand: the messages it sends, and a disconnect on demand."""

    def __init__(self, app: Starlette, body: dict[str, Any], *, spec: str = "2.3") -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self._body = json.dumps(body).encode()
        self._spec = spec
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "http_version": "1.1", "method": "POST",
            "scheme": "https", "path": "/v1/audio/speech", "raw_path": b"/v1/audio/speech", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 443),
        }  # fmt: skip
        self._read = False
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            # What uvicorn does with a send after the client left: under ASGI spec 2.4 it raises;
            # before, it drops the message (the app learns of the disconnect from receive).
            if self._spec >= "2.4":
                raise OSError("the client has gone")
            return
        await self.sent.put(message)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 5)

    async def finished(self) -> None:
        """The app has returned (under ASGI 2.4 a client that left surfaces as ``ClientDisconnect``)."""
        with contextlib.suppress(ClientDisconnect):
            await asyncio.wait_for(self.task, 5)


class Gated:
    """An engine handler: one chunk, then more only as the test lets it; records when its stream closes."""

    def __init__(self) -> None:
        self.more = asyncio.Event()
        self.closed = asyncio.Event()

    async def __call__(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        try:
            yield np.full(4800, 0.2, np.float32)
            while True:
                await self.more.wait()
                self.more.clear()
                yield np.full(4800, 0.2, np.float32)
        finally:
            self.closed.set()


@pytest.fixture
async def app(tmp_path: Path, engine: MockEngine) -> AsyncIterator[Starlette]:
    application = create_app(settings(tmp_path, max_sessions=1), engine=engine)
    async with application.router.lifespan_context(application):
        yield application


async def test_audio_is_sent_while_the_engine_is_still_speaking(app: Starlette, engine: MockEngine) -> None:
    gated = Gated()
    engine.handler = gated
    request = AsgiRequest(app, {"input": TEXT, "voice": "alloy", "response_format": "pcm"})
    start = await request.next()
    assert start["type"] == "http.response.start" and start["status"] == 200
    first = await request.next()
    assert len(first["body"]) == 4800 * 2 and first["more_body"]
    gated.more.set()
    assert len((await request.next())["body"]) == 4800 * 2
    assert not gated.closed.is_set()
    request.gone.set()
    await request.finished()
    await asyncio.wait_for(gated.closed.wait(), 5)


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_client_that_leaves_mid_stream_stops_the_engine_and_frees_its_slot(app: Starlette, engine: MockEngine, spec: str) -> None:
    gated = Gated()
    engine.handler = gated
    request = AsgiRequest(app, {"input": TEXT, "voice": "alloy", "response_format": "mp3"}, spec=spec)
    assert (await request.next())["status"] == 200
    # Only one response may stream at once here (max_sessions=1): a second is refused.
    second = AsgiRequest(app, {"input": TEXT, "voice": "alloy"})
    refused = await second.next()
    assert refused["status"] == 429
    assert json.loads((await second.next())["body"])["error"]["code"] == "limit"
    request.gone.set()
    gated.more.set()  # under ASGI 2.4 a server notices the client has gone at its next send
    await request.finished()
    await asyncio.wait_for(gated.closed.wait(), 5)
    assert app.state.openai_speech_streams.open == 0
    engine.handler = MockEngine().handler
    third = AsgiRequest(app, {"input": TEXT, "voice": "alloy"})
    assert (await third.next())["status"] == 200
    while (await third.next()).get("more_body"):
        pass
    await third.finished()
    assert app.state.openai_speech_streams.open == 0
