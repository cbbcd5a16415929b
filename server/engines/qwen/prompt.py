"""The talker's prompt for a request, built by upstream's own code, and the clone prompts behind it.

Upstream's ``generate_*`` build the prefill embeddings (role tokens, language
and speaker tags, in-context reference codes, trailing text), then run the
whole talker loop inside ``transformers``' ``generate``. We call them with the
talker's ``generate`` swapped for a function that records its inputs and bails
out (``capture_prompt``), so the prompt layout follows the installed
``qwen-tts`` exactly, and so do the codes decoded from it.

``PromptBuilder`` turns a job's data (text, voice, language) into that prompt
for one loaded model; cloning goes through ``ClonePromptCache``, which keeps
each reference's x-vector (and reference codes) in memory and on disk, so a
voice is encoded once, not per request.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base import SAMPLE_RATE, Reference, Voice
from . import compat

_SAMPLING_KEYS = (
    "do_sample",
    "top_k",
    "top_p",
    "temperature",
    "repetition_penalty",
    "subtalker_dosample",
    "subtalker_top_k",
    "subtalker_top_p",
    "subtalker_temperature",
    "max_new_tokens",
)
_ISO = {"zh": "chinese", "en": "english", "ja": "japanese", "ko": "korean", "de": "german", "fr": "french",
        "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian"}  # fmt: skip
_CACHE_SIZE = 64


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured talker inputs")
        self.kwargs = kwargs


@dataclass
class Prompt:
    """What upstream hands the talker's ``generate``, plus the codes to decode behind."""

    inputs_embeds: torch.Tensor  # (1, L, H)
    attention_mask: torch.Tensor
    trailing_text_hidden: torch.Tensor  # (1, n, H)
    tts_pad_embed: torch.Tensor  # (1, 1, H)
    talker_kwargs: dict[str, Any]
    ref_code: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.inputs_embeds.shape[1])


def sampling_kwargs(tts: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Upstream's merge of hard defaults, the checkpoint's generation_config.json, overrides."""
    picked = {k: v for k, v in (overrides or {}).items() if k in _SAMPLING_KEYS}
    merged: dict[str, Any] = tts._merge_generate_kwargs(**picked)
    return merged


def capture_prompt(tts: Any, method: str, /, **kwargs: Any) -> Prompt:
    """Run ``tts.<method>(**kwargs)`` up to the talker's generate and return its inputs.

    Only the thread that owns ``tts`` may call this: it swaps an attribute on the talker.
    """
    talker = tts.model.talker

    def capture(**talker_inputs: Any) -> None:
        raise _Captured(talker_inputs)

    talker.generate = capture  # instance attribute shadows GenerationMixin.generate
    try:
        getattr(tts, method)(**kwargs)
    except _Captured as captured:
        inputs = captured.kwargs
    else:  # pragma: no cover - upstream changed shape
        raise RuntimeError(f"{method} did not reach the talker")
    finally:
        del talker.generate
    prompt_items = kwargs.get("voice_clone_prompt")
    ref_code = prompt_items[0].ref_code if isinstance(prompt_items, list) else None
    return Prompt(
        inputs_embeds=inputs.pop("inputs_embeds"),
        attention_mask=inputs.pop("attention_mask"),
        trailing_text_hidden=inputs.pop("trailing_text_hidden"),
        tts_pad_embed=inputs.pop("tts_pad_embed"),
        talker_kwargs=inputs,
        ref_code=ref_code,
    )


_FILE_KEY = re.compile(r"[0-9A-Za-z_-]{1,64}")


def audio_key(audio: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:20]


class ClonePromptCache:
    """x-vectors (and reference codes when the text is known) per reference, in memory and on disk.

    It outlives the Base model's loads (a swap reloads the model, not the voices);
    ``tag`` names the model in the file names, so another checkpoint never reads them.
    """

    def __init__(self, tag: str, cache_dir: Path | None = None) -> None:
        self.tag = tag
        self.cache_dir = cache_dir
        self._items: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()

    def items(self, tts: Any, ref: Reference) -> list[Any]:
        mode = "icl" if ref.text else "xvec"
        key = (ref.key or audio_key(ref.audio), mode)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        path = self._path(ref, mode)
        items = self._load(path) if path is not None else None
        if items is None:
            audio = np.asarray(ref.audio, dtype=np.float32)
            items = tts.create_voice_clone_prompt(ref_audio=(audio, SAMPLE_RATE), ref_text=ref.text or None, x_vector_only_mode=not ref.text)
            if path is not None:
                self._save(path, items[0])
        self._items[key] = items
        if len(self._items) > _CACHE_SIZE:
            self._items.popitem(last=False)
        return items

    def _path(self, ref: Reference, mode: str) -> Path | None:
        # Only a library key names the same reference for good; a derived one is an anchor of the moment.
        if self.cache_dir is None or ref.key is None or ref.key.startswith("design-") or not _FILE_KEY.fullmatch(ref.key):
            return None
        return self.cache_dir / f"qwen3tts-{self.tag}-{ref.key}-{mode}.pt"

    @staticmethod
    def _load(path: Path) -> list[Any] | None:
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
    def _save(path: Path, item: Any) -> None:
        code = None if item.ref_code is None else item.ref_code.cpu()
        data = {"ref_code": code, "spk": item.ref_spk_embedding.float().cpu(), "ref_text": item.ref_text}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)


class PromptBuilder:
    """Prompts for one loaded model: VoiceDesign for descriptions, Base for references."""

    def __init__(self, tts: Any, generation: dict[str, Any] | None, clones: ClonePromptCache) -> None:
        self.tts = tts
        self.sampling = sampling_kwargs(tts, generation)
        self.clones = clones
        self.languages = {str(x).lower() for x in tts.model.get_supported_languages()}

    def build(self, voice: Voice, text: str, language: str) -> Prompt:
        """Runs on the model's thread."""
        lang = self.language(language)
        if voice.reference is None:
            return capture_prompt(self.tts, "generate_voice_design", text=text, instruct=voice.design, language=lang, **self.sampling)
        items = self.clones.items(self.tts, voice.reference)
        return capture_prompt(self.tts, "generate_voice_clone", text=text, language=lang, voice_clone_prompt=items, **self.sampling)

    def language(self, language: str | None) -> str:
        name = (language or "auto").strip().lower()
        name = _ISO.get(name.split("-")[0], name)
        return name if name in self.languages else "auto"
