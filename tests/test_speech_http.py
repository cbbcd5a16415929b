"""``POST /v1/audio/speech`` in its older forms (wav and pcm, stock and saved voices); the full OpenAI surface is in test_openai_sdk.py."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import numpy as np

from tests.audio_checks import assert_speech

TEXT = "Streaming speech over plain HTTP works too. It arrives as it is made."


def wav_pcm(body: bytes) -> tuple[np.ndarray, int]:
    # The header's sizes are unknown while streaming; read the data after it.
    with wave.open(io.BytesIO(body)) as wav:
        rate = wav.getframerate()
    return np.frombuffer(body[44:], dtype="<i2").astype(np.float32) / 32768, rate


def test_wav_with_instructions_streams(server: Any) -> None:
    with server.http() as http, http.stream("POST", "/v1/audio/speech", json={"model": "x", "input": TEXT, "voice": "alloy", "instructions": "calm", "response_format": "wav"}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        pieces = list(response.iter_bytes())
    pcm, rate = wav_pcm(b"".join(pieces))
    assert rate == 24000
    assert_speech(pcm, rate, TEXT)


def test_pcm_with_stock_and_saved_voices(server: Any, speech_wav: Path) -> None:
    with server.http() as http:
        stock = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "onyx", "response_format": "pcm"})
        assert stock.status_code == 200 and stock.headers["content-type"] == "audio/pcm"
        assert_speech(np.frombuffer(stock.content, dtype="<i2").astype(np.float32) / 32768, 24000, TEXT)
        voice = http.post("/v1/voices", files={"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}, data={"name": "Speaker A"}).json()
        by_name = http.post("/v1/audio/speech", json={"input": TEXT, "voice": "Speaker A", "response_format": "pcm"})
        assert by_name.status_code == 200
        assert_speech(np.frombuffer(by_name.content, dtype="<i2").astype(np.float32) / 32768, 24000, TEXT)
        http.delete(f"/v1/voices/{voice['id']}")
