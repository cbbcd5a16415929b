"""The agent frameworks' OpenAI TTS plugins, with their defaults, pointed at the real server over TLS.

LiveKit's ``livekit.plugins.openai.TTS`` asks for mp3 as SSE events (its
defaults: gpt-4o-mini-tts, voice ash) and decodes them with its own decoder;
Pipecat's ``OpenAITTSService`` streams 24 kHz PCM (gpt-4o-mini-tts, alloy).
The only thing either is given is the base URL (and a key, which a loopback
server does not check); the CA comes from ``SSL_CERT_FILE``, which the OpenAI
SDK's default HTTP client reads.

Pipecat runs in a subprocess (tests/pipecat_tts.py), so that ``SSL_CERT_FILE``
is read by a fresh process and its pipeline's own loop and logging stay out of
the test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio_checks import assert_speech
from tests.conftest import ROOT, LiveServer

TEXT = "Agents speak through MineStream with the OpenAI plugin. It streams as it is made."
PIPECAT_PYTHON = Path(os.environ.get("MINESTREAM_PIPECAT_PYTHON", sys.executable))


async def test_livekit_tts_with_its_defaults_produces_audio_frames(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from livekit.plugins import openai as livekit_openai

    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    tts = livekit_openai.TTS(base_url=f"{server.base_url}/v1", api_key=server.token or "unused")
    try:
        async with tts.synthesize(TEXT) as stream:
            frames = [event.frame async for event in stream]
    finally:
        await tts.aclose()
    assert len(frames) > 3, "LiveKit got the audio in one piece"
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24000, 1)}
    pcm = np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in frames]).astype(np.float32) / 32768
    assert_speech(pcm, 24000, TEXT)


def test_pipecat_tts_with_its_defaults_produces_audio_frames(server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "pipecat.pcm"
    env = {**os.environ, "SSL_CERT_FILE": str(server.ca_file)}
    run = subprocess.run(
        [str(PIPECAT_PYTHON), str(ROOT / "tests" / "pipecat_tts.py"), f"{server.base_url}/v1", str(out), TEXT],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["errors"] == [] and summary["frames"] > 1, summary
    assert summary["sample_rates"] == [24000] and summary["channels"] == [1]
    assert_speech(np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float32) / 32768, 24000, TEXT)
