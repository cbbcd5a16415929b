"""Pipecat's OpenAI TTS service, pointed at MineStream: run by test_openai_plugins.py in Pipecat's own venv.

``python tests/pipecat_tts.py BASE_URL OUT.pcm "text"`` runs the service with
its defaults (model gpt-4o-mini-tts, voice alloy, 24 kHz PCM) in a Pipecat
pipeline (Pipecat's own ``run_test``), writes the audio frames' bytes to
OUT.pcm and prints a JSON summary. The CA comes from ``SSL_CERT_FILE``, which
the OpenAI SDK's default HTTP client trusts. Pipecat pins protobuf<7,
soundfile~=0.13.1 and soxr~=1.0.0, so it cannot share the project's venv;
this script imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


async def main(base_url: str, out: Path, text: str) -> None:
    from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame
    from pipecat.services.openai.tts import OpenAITTSService
    from pipecat.tests.utils import run_test

    service = OpenAITTSService(api_key="unused", base_url=base_url)
    down, up = await run_test(service, frames_to_send=[TTSSpeakFrame(text)], start_timeout=10)
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    errors = [str(f.error) for f in [*down, *up] if isinstance(f, ErrorFrame)]
    out.write_bytes(b"".join(f.audio for f in audio))
    rates = sorted({f.sample_rate for f in audio})
    print(json.dumps({"frames": len(audio), "sample_rates": rates, "channels": sorted({f.num_channels for f in audio}), "errors": errors}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]), 120))
