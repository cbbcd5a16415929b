"""Engine selection: Qwen3-TTS where its weights and a GPU are found, else the preview engine."""

from __future__ import annotations

import logging

from ..config import Settings
from .base import Engine

log = logging.getLogger("minestream.engines")


def create_engine(settings: Settings) -> Engine:
    choice = settings.engine
    if choice == "auto":
        choice = "qwen" if _qwen_usable(settings) else "preview"
        log.info("engine auto: using %s", choice)
    if choice == "qwen":
        from .qwen import QwenEngine

        return QwenEngine(settings.design_model, settings.base_model, decode=settings.qwen_decode, cache_dir=settings.cache_dir)
    if choice == "preview":
        from .preview import PreviewEngine

        return PreviewEngine(workers=settings.preview_workers, threads_per_worker=settings.preview_threads)
    raise ValueError(f"unknown engine {settings.engine!r}: choose auto, preview or qwen")


def _qwen_usable(settings: Settings) -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from .qwen import qwen_weights_available
    except ImportError:
        return False
    return bool(qwen_weights_available(settings.design_model, settings.base_model))
