"""Engine selection: Qwen3-TTS where its weights and a GPU are found, else the preview engine.

Two engines run elsewhere: ``ray`` streams from replicas of either engine on a Ray
Serve cluster (``python -m server.cluster``), ``openai`` from any server with an
OpenAI-compatible ``POST /v1/audio/speech``.
"""

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
    if choice == "openai":
        from .remote import OpenAIEngine

        if not settings.engine_url:
            raise ValueError("--engine openai needs --engine-url")
        return OpenAIEngine(
            settings.engine_url, key=settings.engine_key, ca_file=settings.engine_ca, model=settings.engine_model, voice=settings.engine_voice
        )
    if choice == "ray":
        from .ray import RayEngine

        if not settings.ray_address:
            raise ValueError("--engine ray needs --ray-address")
        return RayEngine(settings.ray_address, settings.ray_app)
    raise ValueError(f"unknown engine {settings.engine!r}: choose auto, preview, qwen, ray or openai")


def _qwen_usable(settings: Settings) -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from .qwen import qwen_weights_available
    except ImportError:
        return False
    return bool(qwen_weights_available(settings.design_model, settings.base_model))
