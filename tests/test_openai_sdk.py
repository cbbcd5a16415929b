"""The real ``openai`` SDK against the real server over TLS: ``POST /v1/audio/speech`` as its users call it.

Every format is decoded back with PyAV (FFmpeg) and must be speech of the
text's length; the SDK's typed errors must carry this server's codes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.audio_checks import CONTAINERS, assert_speech, container_of, decode
from tests.conftest import LiveServer

TEXT = "The OpenAI client speaks through MineStream. Every format streams as it is made."
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]


def sync_client(server: LiveServer) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(verify=server.ssl_context())
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.token or "unused", http_client=http, max_retries=0)


def async_client(server: LiveServer) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(verify=server.ssl_context())
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.token or "unused", http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with sync_client(server) as sdk:
        yield sdk


def speech_of(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt != "pcm":
        assert container_of(data) == CONTAINERS[fmt]
    return decode(data, fmt)


def test_create_defaults_to_mp3_speech(client: openai.OpenAI) -> None:
    response = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=TEXT)
    assert response.response.headers["content-type"] == "audio/mpeg"
    samples, rate = speech_of(response.content, "mp3")
    assert rate == 24000
    assert_speech(samples, rate, TEXT)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_streams_and_decodes_to_speech(client: openai.OpenAI, fmt: str) -> None:
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="coral", input=TEXT, response_format=fmt) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        pieces = [piece for piece in response.iter_bytes() if piece]
    assert len(pieces) > 1, "the body came in one piece: it was not streamed"
    samples, rate = speech_of(b"".join(pieces), fmt)
    assert rate == (48000 if fmt == "opus" else 24000)
    assert_speech(samples, rate, TEXT)


async def test_the_async_client_streams_too(server: LiveServer) -> None:
    async with async_client(server) as sdk:
        plain = await sdk.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input=TEXT, response_format="wav")
        assert_speech(*speech_of(plain.content, "wav"), TEXT)
        async with sdk.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="marin", input=TEXT, response_format="opus") as response:
            pieces = [piece async for piece in response.iter_bytes() if piece]
    assert len(pieces) > 1
    assert_speech(*speech_of(b"".join(pieces), "opus"), TEXT)


def test_speed_changes_the_duration_not_the_voice(client: openai.OpenAI) -> None:
    from server.engines.prosody import median_pitch

    durations, pitches = {}, {}
    for speed in (0.5, 1.0, 2.0):
        data = client.audio.speech.create(model="tts-1", voice="echo", input=TEXT, response_format="pcm", speed=speed).content
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
        durations[speed], pitches[speed] = len(samples) / 24000, median_pitch(samples, 24000)
    # The engine's own pace varies a little between runs; a stretch of 2 is far outside that.
    assert 1.7 < durations[0.5] / durations[1.0] < 2.3 and 1.7 < durations[1.0] / durations[2.0] < 2.3, durations
    # Playing faster by resampling would double or halve the pitch; a time-stretch keeps it. (The
    # estimator reads fast speech a little high, up to 1.21x measured: test_stretch.py checks the pitch closely.)
    assert all(abs(pitches[s] / pitches[1.0] - 1) < 0.35 for s in pitches), pitches


def test_sse_events_carry_the_audio_and_usage(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="ash", input=TEXT, stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) > 2
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples, rate = speech_of(audio, "mp3")
    assert_speech(samples, rate, TEXT)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(TEXT) and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert abs(usage["output_tokens"] * 0.08 - len(samples) / rate) < 0.2  # 80 ms frames of what was sent


def test_voice_forms_stock_saved_name_id_object(client: openai.OpenAI, server: LiveServer, speech_wav: Path) -> None:
    with server.http() as http:
        saved = http.post("/v1/voices", files={"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}, data={"name": "SDK speaker"}).json()
    try:
        voices: list[Any] = ["cedar", "SDK speaker", saved["id"], {"id": saved["id"]}]
        for voice in voices:
            data = client.audio.speech.create(model="gpt-4o-mini-tts", voice=voice, input=TEXT, response_format="pcm").content
            assert_speech(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24000, TEXT)
        designed = client.audio.speech.create(
            model="gpt-4o-mini-tts", voice="sage", input=TEXT, instructions="Speak slowly, in a very deep voice.", response_format="pcm"
        )
        assert_speech(np.frombuffer(designed.content, dtype="<i2").astype(np.float32) / 32768, 24000, TEXT)
    finally:
        with server.http() as http:
            http.delete(f"/v1/voices/{saved['id']}")


@pytest.mark.parametrize(
    ("kwargs", "error", "code", "param"),
    [
        ({"input": "... !? —"}, openai.BadRequestError, "bad_message", None),
        ({"input": "Hallo zusammen.", "extra_body": {"language": "klingon"}}, openai.BadRequestError, "unavailable", None),
        ({"input": TEXT, "speed": 5.0}, openai.BadRequestError, "bad_message", "speed"),
        ({"input": TEXT, "response_format": "ogg"}, openai.BadRequestError, "bad_message", "response_format"),
        ({"input": TEXT, "voice": "nobody-saved-this"}, openai.NotFoundError, "voice_not_found", "voice"),
        ({"input": TEXT, "voice": {"id": "v_0000000000000000"}}, openai.NotFoundError, "voice_not_found", "voice"),
    ],
)
def test_refusals_are_typed_sdk_errors_with_the_servers_code(
    client: openai.OpenAI, kwargs: dict[str, Any], error: type[openai.APIStatusError], code: str, param: str | None
) -> None:
    kwargs = {"model": "gpt-4o-mini-tts", "voice": "alloy", **kwargs}
    with pytest.raises(error) as caught:
        client.audio.speech.create(**kwargs)
    assert caught.value.code == code and caught.value.param == param
    assert caught.value.type == "invalid_request_error" and caught.value.body["message"]  # type: ignore[index]


def test_a_token_server_takes_the_api_key_as_its_token(guarded_server: LiveServer) -> None:
    live = guarded_server
    with sync_client(live) as sdk:
        assert sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="wav").content[:4] == b"RIFF"
    wrong = openai.OpenAI(
        base_url=f"{live.base_url}/v1", api_key="wrong", http_client=openai.DefaultHttpxClient(verify=live.ssl_context()), max_retries=0
    )
    with wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    assert caught.value.code == "unauthorized"
