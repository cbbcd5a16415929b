"""``--engine openai``: a front that speaks through a second MineStream's ``POST /v1/audio/speech``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client import ServerError
from server.engines.remote import base_url, kind_of_model
from tests.audio_checks import assert_speech
from tests.conftest import LiveServer, free_port


@pytest.fixture(scope="module")
def remote_pair(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(front, backend): the front's engine is the backend's OpenAI-compatible speech endpoint."""
    root = tmp_path_factory.mktemp("remote")
    backend = LiveServer(root / "backend", certs_dir, ("--engine", "preview")).start()
    remote = ("--engine", "openai", "--engine-url", f"{backend.base_url}/v1", "--engine-ca", str(backend.ca_file))
    try:
        front = LiveServer(root / "front", certs_dir, remote).start()
        try:
            yield front, backend
        finally:
            front.stop()
    finally:
        backend.stop()


def backend_streams(backend: LiveServer) -> float:
    """The backend's preview engine: jobs running or queued."""
    with backend.http() as http:
        engine = http.get("/healthz").json()["engine"]
    return float(engine["busy"] + engine["queue_depth"])


async def test_front_speaks_through_the_remote(remote_pair: tuple[LiveServer, LiveServer]) -> None:
    front, backend = remote_pair
    async with await front.client() as client:
        engine = client.ready["engine"]
        assert engine["kind"] == "openai" and engine["design"] and not engine["clone"]
        assert backend.base_url in engine["note"] and "cloning is not offered" in engine["note"]
        text = "The remote engine speaks. It streams each sentence as it is made."
        speech = await client.say(text, design="a calm narrator")
    assert_speech(speech.pcm(), 24000, text)
    assert len(speech.chunks) > 4  # streamed in pieces, not one body at the end
    with front.http() as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["engine"]["remote"] == backend.base_url
        # The front's own OpenAI endpoint, on top of the remote one.
        with http.stream("POST", "/v1/audio/speech", json={"input": "Two hops of speech.", "instructions": "a bright voice", "response_format": "wav"}) as reply:
            assert reply.status_code == 200
            body = reply.read()
    assert body[:4] == b"RIFF"
    assert_speech(np.frombuffer(body[44:], dtype="<i2").astype(np.float32) / 32768, 24000, "Two hops of speech.")


async def test_cancel_closes_the_remote_stream(remote_pair: tuple[LiveServer, LiveServer]) -> None:
    front, backend = remote_pair
    long_text = " ".join(["This sentence goes on and on, through clause after clause, so that it takes a while to speak."] * 3)
    async with await front.client() as client:
        speech = await client.speak(long_text, design="a calm narrator")
        async for _ in speech:
            break  # first audio
        await speech.cancel()
        await speech.collect()
        assert speech.done is not None and speech.done["cancelled"]
        # The backend drops the rest: it has nothing running or queued for long.
        for _ in range(100):
            if backend_streams(backend) == 0:
                break
            await asyncio.sleep(0.1)
        assert backend_streams(backend) == 0
        after = await client.say("Still here after the cancel.", design="a calm narrator")
    assert_speech(after.pcm(), 24000, "Still here after the cancel.")


async def test_remote_down_is_unavailable_then_recovers(remote_pair: tuple[LiveServer, LiveServer], speech_wav: Any) -> None:
    front, backend = remote_pair
    async with await front.client() as client:
        with pytest.raises(ServerError) as refused:
            await client.upload_voice(speech_wav.read_bytes(), name="x")
        assert refused.value.code == "unavailable" and "clone" in refused.value.message

        backend.stop()
        with pytest.raises(ServerError) as down:
            await client.say("Nobody is there.", design="a calm narrator")
        assert down.value.code == "unavailable" and "unreachable" in down.value.message
        backend.start()
        back = await client.say("The remote is back.", design="a calm narrator")
    assert_speech(back.pcm(), 24000, "The remote is back.")


def test_what_a_remote_can_do_from_its_model_name() -> None:
    assert base_url("https://h:8000/v1/audio/speech/") == base_url("https://h:8000/v1") == "https://h:8000"
    design = kind_of_model("Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign")
    clone = kind_of_model("Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    assert (design.design, design.clone, clone.design, clone.clone) == (True, False, False, True)
    assert design.task_types and "english" in design.languages
    other = kind_of_model("some/other-tts")
    assert other.design and other.clone and not other.task_types


async def test_unreachable_at_start_still_starts(server_factory: Any) -> None:
    front = server_factory("--engine-url", f"https://127.0.0.1:{free_port()}", engine="openai")
    with front.http() as http:
        assert http.get("/healthz").json()["engine"]["state"] == "unreachable"
    async with await front.client() as client:
        with pytest.raises(ServerError) as down:
            await client.say("Hello.", design="a calm narrator")
    assert down.value.code == "unavailable" and "unreachable" in down.value.message


def test_voices_map_to_the_fields_vllm_omni_takes() -> None:
    """The request bodies for a Qwen3-TTS server by vLLM-Omni (none runs here; its fields are documented)."""
    import base64
    import io
    import wave

    from server.engines.base import Reference, SynthesisRequest, Voice
    from server.engines.remote import OpenAIEngine
    from server.errors import Unavailable

    engine = OpenAIEngine("https://tts.example:8000/v1", model="Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    engine._kind = kind_of_model("Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    audio = (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32)
    clone = engine._body(SynthesisRequest("Hi.", Voice(reference=Reference(audio, "what I said", key="k1")), language="en"))
    assert (clone["task_type"], clone["ref_text"], clone["x_vector_only_mode"], clone["language"]) == ("Base", "what I said", False, "English")
    header, data = clone["ref_audio"].split(",", 1)
    assert header == "data:audio/wav;base64"
    with wave.open(io.BytesIO(base64.b64decode(data))) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (24000, 24000)
    with pytest.raises(Unavailable, match="cannot design"):
        engine._body(SynthesisRequest("Hi.", Voice(design="a calm voice")))

    engine._kind = kind_of_model("Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign")
    design = engine._body(SynthesisRequest("Hi.", Voice(design="a calm voice")))
    assert (design["task_type"], design["instructions"], design["response_format"], design["stream"]) == ("VoiceDesign", "a calm voice", "pcm", True)
    assert design["model"] == "Qwen/Qwen3-TTS-12Hz-1.7B-Base" and "language" not in design
