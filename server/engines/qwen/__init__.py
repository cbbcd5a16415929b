"""Qwen3-TTS engine: VoiceDesign for designed voices, Base for cloned ones.

Importing this package does not import torch or ``qwen_tts``; ``--engine auto``
can ask ``qwen_weights_available`` cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import QwenEngine

__all__ = ["QwenEngine", "qwen_weights_available"]


def qwen_weights_available(design_model: str, base_model: str) -> bool:
    """Both models are local dirs with config.json or already in the HF cache; no network."""
    return local_snapshot(design_model) is not None and local_snapshot(base_model) is not None


def local_snapshot(source: str) -> Path | None:
    """A local dir holding ``source`` (a dir, or a hub id already in the HF cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path if (path / "config.json").is_file() else None
    if source.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        found = Path(snapshot_download(source, local_files_only=True))
    except Exception:
        return None
    return found if (found / "config.json").is_file() else None


def __getattr__(name: str) -> Any:
    if name == "QwenEngine":
        from .engine import QwenEngine

        return QwenEngine
    raise AttributeError(name)
