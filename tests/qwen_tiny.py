"""Tiny random-weight Qwen3-TTS models of the real architecture, for offline tests.

The builder lives in ``bench.qwen_models`` (the GPU benchmark builds the same
models at real size); this module keeps the test-facing names. The dirs have
the real layout, so they load through ``Qwen3TTSModel.from_pretrained``
exactly like hub checkpoints. Only the sizes shrink; the codec keeps its 16
code groups, the 3072-entry talker vocabulary with the real control ids,
2048-entry codebooks, and 1920 samples per frame.

In conftest::

    from tests.qwen_tiny import qwen_tiny_models  # noqa: F401  (session fixture)
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bench.qwen_models import TINY_MAX_NEW_TOKENS, build_models

__all__ = ["TINY_MAX_NEW_TOKENS", "build_models", "build_tiny_models", "qwen_tiny_models", "upstream_generate"]


def build_tiny_models(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Build (or reuse) ``root/design`` and ``root/base``; returns their paths."""
    return build_models(root, "tiny")


@pytest.fixture(scope="session")
def qwen_tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(design_dir, base_dir) built once per test run (or from $QWEN_TINY_DIR).

    Under xdist every worker has its own base temp under one shared parent; the
    first worker to ask builds the models there, holding a lock the others wait
    on, and they reuse what it built (``build_models`` returns a complete build).
    """
    cached = os.environ.get("QWEN_TINY_DIR")
    if cached:
        return build_tiny_models(cached)
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    root = shared / "qwen-tiny"
    root.mkdir(exist_ok=True)
    with open(shared / "qwen-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_tiny_models(root)


def upstream_generate(tts: Any, method: str, **kwargs: Any) -> tuple[Any, Any]:
    """(codes (T, 16), one-shot audio) of upstream's own ``tts.<method>(**kwargs)``: its talker loop, its decode.

    The codes are what ``generate_*`` hands its codec (recorded on the way, not recomputed).
    """
    original = tts.model.generate
    results: list[Any] = []

    def recording(*args: Any, **kw: Any) -> Any:
        results.append(original(*args, **kw))
        return results[-1]

    tts.model.generate = recording
    try:
        wavs, _ = getattr(tts, method)(**kwargs)
    finally:
        del tts.model.generate
    codes_list, _ = results[0]
    return codes_list[0], wavs[0]


if __name__ == "__main__":
    print(*build_tiny_models(tempfile.mkdtemp(prefix="qwen-tiny-")))
