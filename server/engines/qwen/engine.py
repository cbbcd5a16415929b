"""``QwenEngine``: Qwen3-TTS VoiceDesign answers designs, Base answers clones.

VoiceDesign cannot clone and Base cannot design. A designed voice keeps its
timbre across sentences and utterances by being rendered once with VoiceDesign
and then cloned from that audio with Base (``continuation``, ``render_design``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import EngineError
from ...text import pieces as text_pieces
from ..base import SAMPLE_RATE, Engine, EngineInfo, Reference, SynthesisRequest, Voice
from . import compat
from .graphs import StaticTalker, predictor_sampling, supports_static
from .manager import ModelManager
from .scheduler import END, Job, Scheduler
from .stream import DEFAULT_LEFT_CONTEXT, Prompt, Talker, capture_prompt, sampling_kwargs, warm_codec

LANGUAGES = ["auto", "chinese", "english", "japanese", "korean", "german", "french", "russian", "portuguese", "spanish", "italian"]
_ISO = {"zh": "chinese", "en": "english", "ja": "japanese", "ko": "korean", "de": "german", "fr": "french",
        "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian"}  # fmt: skip
_SAMPLE_TEXT = {
    "chinese": "你好，很高兴认识你。今天的天气真不错，我们一起出去走走吧。",
    "japanese": "こんにちは、はじめまして。今日はとてもいい天気ですね。",
}
_DEFAULT_SAMPLE = "Hello, it's nice to meet you. The weather is lovely today, so let's take a walk together."
_PROMPT_CACHE_SIZE = 64
_FILE_KEY = re.compile(r"[0-9A-Za-z_-]{1,64}")


def split_long(text: str, max_chars: int, language: str = "auto") -> list[str]:
    """Pieces of at most ``max_chars``: whole sentences packed, longer ones cut (``server.text.pieces``)."""
    return text_pieces(text, max_chars, language)


def _audio_key(audio: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:20]


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
        max_active: int = 32,
        decode: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        """``decode``: "static" runs the talker on static caches (CUDA graphs on a GPU), "plain"
        through upstream's modules step by step, "auto" static on a GPU and plain elsewhere.
        ``cache_dir``: where voice-clone prompts are kept across restarts, by reference key."""
        self.cache_dir = cache_dir
        self.device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        default_dtype = "float32" if self.device == "cpu" else "bfloat16"
        self.dtype: torch.dtype = getattr(torch, dtype or default_dtype)
        self.generation = dict(generation or {})
        self.max_frames = max_frames
        self.max_chars = max_chars
        self.chunk_frames = chunk_frames
        self.left_context = left_context_frames
        self.max_active = max_active
        if decode not in ("auto", "static", "plain"):
            raise ValueError(f"decode must be auto, static or plain, not {decode!r}")
        self.static = decode == "static" or (decode == "auto" and self.device.startswith("cuda"))
        self.sources = {"design": design_model, "base": base_model}
        self._budget = memory_budget_bytes
        self.manager: ModelManager | None = None
        self._schedulers: dict[str, Scheduler] = {}
        self._prompts: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._base_tag = hashlib.sha1(base_model.encode()).hexdigest()[:8]
        self._state = "created"
        self.recent_jobs: deque[dict[str, float]] = deque(maxlen=256)
        """The phase marks of recent segments (``Job.marks``): where time to first audio goes."""
        self.info = EngineInfo(
            name="qwen3-tts",
            kind="qwen",
            models=[design_model, base_model],
            languages=list(LANGUAGES),
            design=True,
            clone=True,
            note=f"VoiceDesign + Base, {self.dtype} on {self.device}, {'static' if self.static else 'plain'} decode",
        )

    async def start(self) -> None:
        compat.install()
        self._state = "loading"
        self.manager = ModelManager(
            self.sources,
            device=self.device,
            dtype=self.dtype,
            memory_budget_bytes=self._budget,
            flash_attention=not self.static,  # the static path builds SDPA masks
        )
        await asyncio.to_thread(self.manager.preload)
        self._schedulers = {k: Scheduler(k, self.manager, max_active=self.max_active, talker_for=self._talker) for k in self.sources}
        self._state = "ready"

    async def close(self) -> None:
        self._state = "closed"
        schedulers, self._schedulers = self._schedulers, {}
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in schedulers.values()))
        if self.manager is not None:
            self.manager.close()

    # -- synthesis ---------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        voice = request.voice
        pieces = split_long(request.text, self.max_chars, request.language)
        for index, piece in enumerate(pieces):
            heard: list[np.ndarray] = []
            async for chunk in self._stream(request, voice, piece, first=request.first and index == 0):
                heard.append(chunk)
                yield chunk
            if index + 1 < len(pieces):  # long input: later pieces keep the first's timbre
                voice = self.continuation(voice, piece, np.concatenate(heard) if heard else np.zeros(0))

    async def _stream(self, request: SynthesisRequest, voice: Voice, text: str, *, first: bool) -> AsyncIterator[np.ndarray]:
        if not self._schedulers:
            raise EngineError("the qwen engine is not started")
        kind = "base" if voice.reference is not None else "design"
        job = Job(
            lambda tts: self._prompt(tts, kind, voice, text, request.language),
            due=request.due,
            max_frames=min(self.max_frames, 40 + 5 * len(text)),
            chunks=self.chunk_frames if first else (self.chunk_frames[1], self.chunk_frames[1]),
            left_context=self.left_context,
            loop=asyncio.get_running_loop(),
        )
        self._schedulers[kind].submit(job)
        self.recent_jobs.append(job.marks)
        try:
            while (item := await job.queue.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                if item.size:
                    yield item
        finally:
            job.cancel()  # the scheduler drops the stream before its next step

    def _talker(self, tts: Any) -> Talker:
        """Runs on the model's thread: its talker, made once per load (graphs are captured here)."""
        talker: Talker | None = getattr(tts, "_minestream_talker", None)
        if talker is None:
            if self.static and supports_static(tts):
                talker = StaticTalker(tts)
                talker.warm(predictor_sampling(sampling_kwargs(tts, self.generation)))
            else:
                talker = Talker(tts)
            if self.device.startswith("cuda"):
                # Each new decode window length costs cuDNN a plan build (up to ~1 s); windows are
                # at most left context + a full chunk long, so build them all before any request.
                warm_codec(tts, self.left_context + self.chunk_frames[1])
            tts._minestream_talker = talker  # unloading the model frees its graphs and caches with it
        return talker

    def _prompt(self, tts: Any, kind: str, voice: Voice, text: str, language: str) -> Prompt:
        """Runs on the model's thread: upstream's prompt for this request."""
        sampling = sampling_kwargs(tts, self.generation)
        lang = self._language(tts, language)
        if kind == "design":
            return capture_prompt(tts, "generate_voice_design", text=text, instruct=voice.design, language=lang, **sampling)
        assert voice.reference is not None, "clone requests carry a reference"
        items = self._clone_items(tts, voice.reference)
        return capture_prompt(tts, "generate_voice_clone", text=text, language=lang, voice_clone_prompt=items, **sampling)

    @staticmethod
    def _language(tts: Any, language: str | None) -> str:
        name = (language or "auto").strip().lower()
        name = _ISO.get(name.split("-")[0], name)
        supported = {str(x).lower() for x in tts.model.get_supported_languages()}
        return name if name in supported else "auto"

    # -- voice prompts -----------------------------------------------------

    def _clone_items(self, tts: Any, ref: Reference) -> list[Any]:
        """x-vector (and reference codes when the text is known), cached in memory and on disk."""
        mode = "icl" if ref.text else "xvec"
        key = (ref.key or _audio_key(ref.audio), mode)
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        path = self._prompt_path(ref, key[0], mode)
        items = self._load_items(path) if path is not None else None
        if items is None:
            audio = np.asarray(ref.audio, dtype=np.float32)
            items = tts.create_voice_clone_prompt(
                ref_audio=(audio, SAMPLE_RATE), ref_text=ref.text or None, x_vector_only_mode=not ref.text
            )
            if path is not None:
                self._save_items(path, items[0])
        self._prompts[key] = items
        if len(self._prompts) > _PROMPT_CACHE_SIZE:
            self._prompts.popitem(last=False)
        return items

    def _prompt_path(self, ref: Reference, key: str, mode: str) -> Path | None:
        # Only a library key names the same reference for good; a derived one is an anchor of the moment.
        if self.cache_dir is None or ref.key is None or ref.key.startswith("design-") or not _FILE_KEY.fullmatch(ref.key):
            return None
        return self.cache_dir / f"qwen3tts-{self._base_tag}-{key}-{mode}.pt"

    @staticmethod
    def _load_items(path: Path) -> list[Any] | None:
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # a stale or torn file: recompute and overwrite
        item = compat.import_qwen_tts().VoiceClonePromptItem(
            ref_code=saved["ref_code"],
            ref_spk_embedding=saved["spk"],
            x_vector_only_mode=saved["ref_code"] is None,
            icl_mode=saved["ref_code"] is not None,
            ref_text=saved["ref_text"],
        )
        return [item]

    @staticmethod
    def _save_items(path: Path, item: Any) -> None:
        code = None if item.ref_code is None else item.ref_code.cpu()
        data = {"ref_code": code, "spk": item.ref_spk_embedding.float().cpu(), "ref_text": item.ref_text}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)

    # -- designed voices ---------------------------------------------------

    def continuation(self, voice: Voice, text: str, audio: np.ndarray) -> Voice:
        if voice.design is None or voice.reference is not None or not np.asarray(audio).size:
            return voice
        audio = np.asarray(audio, dtype=np.float32)
        ref = Reference(audio=audio, text=text.strip() or None, key=f"design-{_audio_key(audio)}")
        return Voice(design=voice.design, reference=ref, voice_id=voice.voice_id)

    async def render_design(self, description: str, language: str = "auto") -> Reference | None:
        lang = _ISO.get(language.lower(), language.lower())
        text = _SAMPLE_TEXT.get(lang, _DEFAULT_SAMPLE)
        request = SynthesisRequest(text=text, voice=Voice(design=description), language=language)
        chunks = [chunk async for chunk in self.synthesize(request)]
        if not chunks:
            return None
        return Reference(audio=np.concatenate(chunks), text=text)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self._state}
        if self.manager is not None:
            out.update(self.manager.health())
        out["queue_depth"] = sum(s.depth for s in self._schedulers.values())
        out["active_streams"] = sum(s.active for s in self._schedulers.values())
        out["decode"] = "static" if self.static else "plain"
        if self.manager is not None:
            talkers = {k: getattr(m, "_minestream_talker", None) for k, m in self.manager.loaded().items()}
            out["static_slots"] = {k: t.usage() for k, t in talkers.items() if isinstance(t, StaticTalker)}
        return out
