"""Engine selection: Qwen3-TTS where its weights and a GPU are found, else the preview engine.

Two engines run elsewhere: ``ray`` streams from replicas of either engine on a Ray
Serve cluster (``python -m server.cluster``), ``openai`` from any server with an
OpenAI-compatible ``POST /v1/audio/speech``.
"""

from __future__ import annotations

import glob
import logging

from ..config import Settings
from .base import Engine

log = logging.getLogger("minestream.engines")


def create_engine(settings: Settings) -> Engine:
    choice = settings.engine
    if choice == "auto":
        missing = _qwen_missing(settings)
        choice = "preview" if missing else "qwen"
        log.info("engine auto: %s", f"preview, because {missing}" if missing else "qwen3-tts: a CUDA GPU and both models' weights are here")
    if choice == "qwen":
        from .qwen import QwenEngine

        return QwenEngine(settings.design_model, settings.base_model, decode=settings.qwen_decode, predictor=settings.qwen_predictor,
                          talker=settings.qwen_talker, cache_dir=settings.cache_dir)
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


_GPU_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")
"""Device nodes of NVIDIA, ROCm and WSL GPUs: without one, torch sees no CUDA device either."""


def _qwen_missing(settings: Settings) -> str | None:
    """Why the Qwen engine cannot run here, or None when it can."""
    if not any(glob.glob(pattern) for pattern in _GPU_DEVICES):
        # Importing torch only to hear "no GPU" costs seconds at every start of a CPU server.
        return "no GPU device node (/dev/nvidia*, /dev/kfd, /dev/dxg) on this machine"
    try:
        import torch
    except ImportError:
        return "torch is not installed (./run_tls.sh installs it on a machine with nvidia-smi)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    try:
        from .qwen import qwen_weights_available
    except ImportError as exc:
        return f"the Qwen extra is not installed ({exc.name})"
    if not qwen_weights_available(settings.design_model, settings.base_model):
        return f"the weights of {settings.design_model} and {settings.base_model} are not in the local model cache (./run_tls.sh fetches them)"
    return None
