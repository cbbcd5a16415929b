"""``QwenEngine``: Qwen3-TTS VoiceDesign answers designs, Base answers clones.

VoiceDesign cannot clone and Base cannot design. A designed voice keeps its
timbre across sentences and utterances by being rendered once with VoiceDesign
and then cloned from that audio with Base (``continuation``, ``render_design``).

Each model, once resident, has a runtime (``runtime.py``: its persistent decode
batch, graphs, codec, prompt builder) and a scheduler thread
(``scheduler.py``) that serves every stream of that model in one batched step
per frame. The engine only turns requests into jobs and reads their mailboxes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import EngineError
from ..base import Engine, EngineInfo, Reference, SynthesisRequest, Voice
from ..mailbox import Mailbox
from . import compat
from .batch import DEFAULT_MAX_LEN, DEFAULT_MAX_TEXT
from .job import Job
from .manager import ModelManager
from .prompt import ClonePromptCache, audio_key
from .runtime import DecodeSettings, RuntimeFactory
from .scheduler import DEFAULT_PREFILL_POSITIONS, Scheduler
from .window_codec import DEFAULT_LEFT_CONTEXT

LANGUAGES = ["auto", "chinese", "english", "japanese", "korean", "german", "french", "russian", "portuguese", "spanish", "italian"]
_ISO = {"zh": "chinese", "en": "english", "ja": "japanese", "ko": "korean", "de": "german", "fr": "french",
        "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian"}  # fmt: skip
_SAMPLE_TEXT = {
    "chinese": "你好，很高兴认识你。今天的天气真不错，我们一起出去走走吧。",
    "japanese": "こんにちは、はじめまして。今日はとてもいい天気ですね。",
}
_DEFAULT_SAMPLE = "Hello, it's nice to meet you. The weather is lovely today, so let's take a walk together."


class QwenEngine(Engine):
    def __init__(
        self,
        design_model: str,
        base_model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        memory_budget_bytes: int | None = None,
        generation: dict[str, Any] | None = None,
        max_frames: int = 1500,
        max_chars: int = 400,
        chunk_frames: tuple[int, int] = (2, 12),
        left_context_frames: int = DEFAULT_LEFT_CONTEXT,
        rows: int = 64,
        max_len: int = DEFAULT_MAX_LEN,
        max_text: int = DEFAULT_MAX_TEXT,
        prefill_positions: int = DEFAULT_PREFILL_POSITIONS,
        decode: str = "auto",
        noise: str = "counter",
        predictor: str = "folded",
        talker: str = "modules",
        codec: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        """``rows``: decode rows per model at most (the memory plan may give fewer). ``decode``:
        "graphs" captures the batch's step as CUDA graphs, "eager" runs it op by op, "auto" is
        graphs on a GPU. ``noise``: "counter" (per-row counter-based draws, the server's) or
        "generator" (one torch.Generator per row, in upstream's order: a reference). ``predictor``:
        "folded" (the code predictor over folded weights), "compiled" (the same under
        ``torch.compile``, compiled when the batch captures its graphs, or at the first step without
        them) or "eager" (upstream's modules, the reference). ``talker``: "modules" (upstream's,
        over the batch's KV pool) or "compiled" (the same step under ``torch.compile``). ``codec``:
        "window" (re-decodes 72 frames of left context per chunk), "stateful" (``codec.CodecBatch``),
        "auto" (stateful where this build has it). ``cache_dir``: where voice-clone prompts are
        kept across restarts, by the library's reference key."""
        if decode not in ("auto", "graphs", "eager"):
            raise ValueError(f"decode must be auto, graphs or eager, not {decode!r}")
        self.device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        default_dtype = "float32" if self.device == "cpu" else "bfloat16"
        self.dtype: torch.dtype = getattr(torch, dtype or default_dtype)
        self.max_frames = max_frames
        self.max_chars = max_chars
        self.chunk_frames = chunk_frames
        self.sources = {"design": design_model, "base": base_model}
        graphs = decode != "eager" and self.device.startswith("cuda")
        self.decode = "graphs" if graphs else "eager"
        self.settings = DecodeSettings(
            generation=dict(generation or {}), max_len=max_len, max_text=max_text, graphs=graphs, noise=noise, predictor=predictor, talker=talker,
            codec=codec, left_context=left_context_frames, longest_chunk=chunk_frames[1],
        )  # fmt: skip
        self.rows = rows
        self.prefill_positions = prefill_positions
        self._budget = memory_budget_bytes
        self._clones = ClonePromptCache(hashlib.sha1(base_model.encode()).hexdigest()[:8], cache_dir)
        self.manager: ModelManager | None = None
        self._schedulers: dict[str, Scheduler] = {}
        self._state = "created"
        self.recent_jobs: deque[dict[str, float]] = deque(maxlen=4096)
        """The phase marks of recent segments (``Job.marks``): where time to first audio goes."""
        self.info = EngineInfo(
            name="qwen3-tts",
            kind="qwen",
            models=[design_model, base_model],
            languages=list(LANGUAGES),
            design=True,
            clone=True,
            note=f"VoiceDesign + Base, {self.dtype} on {self.device}, batched decode ({self.decode})",
            segment_chars=max_chars,
        )

    async def start(self) -> None:
        compat.install()
        self._state = "loading"
        runtimes = RuntimeFactory(self.settings, self._clones)
        s = self.settings
        self.manager = ModelManager(
            self.sources, runtimes, device=self.device, dtype=self.dtype, max_rows=self.rows, max_len=s.max_len,
            max_text=s.max_text, memory_budget_bytes=self._budget,
        )  # fmt: skip
        await asyncio.to_thread(self.manager.start)
        self._schedulers = {k: Scheduler(k, self.manager, prefill_positions=self.prefill_positions) for k in self.sources}
        for scheduler in self._schedulers.values():
            scheduler.start()
        self._state = "ready"

    async def close(self) -> None:
        self._state = "closed"
        schedulers, self._schedulers = self._schedulers, {}
        for scheduler in schedulers.values():
            scheduler.stop()
        if self.manager is not None:
            self.manager.close()  # wakes a scheduler waiting for a model
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in schedulers.values()))

    # -- synthesis ---------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """One piece of text: the speech layer cuts text to ``info.segment_chars`` and anchors the voice."""
        async for chunk in self._stream(request, request.voice, request.text, first=request.first):
            yield chunk

    async def _stream(self, request: SynthesisRequest, voice: Voice, text: str, *, first: bool) -> AsyncIterator[np.ndarray]:
        if not self._schedulers:
            raise EngineError("the qwen engine is not started")
        first_chunk, chunk = self.chunk_frames
        job = Job(
            text=text,
            voice=voice,
            language=request.language,
            mailbox=Mailbox(),
            due=request.due,
            owner=request.owner,
            max_frames=min(self.max_frames, 40 + 5 * len(text)),
            first_chunk=first_chunk if first else chunk,
            chunk=chunk,
        )
        self._schedulers[job.kind].submit(job)
        self.recent_jobs.append(job.marks)
        try:
            async for item in job.mailbox:
                if item.size:
                    yield item
        finally:
            job.mailbox.close()  # at once on cancel or disconnect: the scheduler drops the stream before its next step

    # -- designed voices ---------------------------------------------------

    def continuation(self, voice: Voice, text: str, audio: np.ndarray) -> Voice:
        if voice.design is None or voice.reference is not None or not np.asarray(audio).size:
            return voice
        audio = np.asarray(audio, dtype=np.float32)
        ref = Reference(audio=audio, text=text.strip() or None, key=f"design-{audio_key(audio)}")
        return Voice(design=voice.design, reference=ref, voice_id=voice.voice_id)

    async def render_design(self, description: str, language: str = "auto") -> Reference | None:
        lang = _ISO.get(language.lower(), language.lower())
        text = _SAMPLE_TEXT.get(lang, _DEFAULT_SAMPLE)
        request = SynthesisRequest(text=text, voice=Voice(design=description), language=language)
        chunks = [chunk async for chunk in self.synthesize(request)]
        if not chunks:
            return None
        return Reference(audio=np.concatenate(chunks), text=text)

    # -- reports -----------------------------------------------------------

    def scheduler(self, kind: str) -> Scheduler:
        return self._schedulers[kind]

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self._state, "decode": self.decode}
        if self.manager is not None:
            out.update(self.manager.health())
        out["queue_depth"] = sum(s.depth for s in self._schedulers.values())
        out["active_streams"] = sum(s.active for s in self._schedulers.values())
        loaded = self.manager.loaded() if self.manager is not None else {}
        out["rows"] = {kind: runtime.health() for kind, runtime in loaded.items()}
        return out
