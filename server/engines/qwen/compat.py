"""Make ``import qwen_tts`` work where its 25 Hz tokenizer's dependencies can't load.

``qwen_tts`` imports its 25 Hz tokenizer at package import, and that imports
``torchaudio.compliance.kaldi``, ``sox`` and ``onnxruntime``. The 12 Hz models
never call them, but torchaudio wheels do not load against a CPU build of
torch, so the whole package would fail to import. For each of those modules
that cannot be imported we register a stand-in that raises on first use, so
only the unused 25 Hz path fails, and loudly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

_SHIMMED = ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi", "sox", "onnxruntime")


class MissingDependency(ImportError):
    """A module the 25 Hz tokenizer needs was not importable."""


class _Unavailable(types.ModuleType):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.__reason = reason
        self.__path__: list[str] = []  # lets ``import a.b`` resolve through the stub
        # find_spec() on a registered module reads __spec__; there is no
        # distribution behind it, so transformers' availability probes say "absent".
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        raise MissingDependency(
            f"{self.__name__}.{attr} is needed by the Qwen3-TTS 25 Hz tokenizer, which this server does not support ({self.__reason})"
        )


def _importable(name: str) -> str | None:
    """None when ``name`` imports; otherwise why not."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # torchaudio raises OSError/RuntimeError on ABI mismatch
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def install() -> dict[str, str]:
    """Register stand-ins for unimportable modules; returns {name: reason}. Idempotent."""
    # transformers probes for torchaudio once at import; let it see the truth.
    importlib.import_module("transformers")
    stubbed: dict[str, str] = {}
    for name in _SHIMMED:
        current = sys.modules.get(name)
        if isinstance(current, _Unavailable):
            continue
        if current is None:
            reason = _importable(name)
            if reason is None:
                continue
            # A half-imported torchaudio leaves broken entries behind.
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            stubbed[name] = reason
            sys.modules[name] = _Unavailable(name, reason)
    for name in _SHIMMED:  # ``import a.b.c`` also reads attributes off the parents
        parent, _, child = name.rpartition(".")
        if parent and isinstance(sys.modules.get(parent), _Unavailable):
            object.__setattr__(sys.modules[parent], child, sys.modules[name])
    return stubbed


def import_qwen_tts() -> Any:
    """``import qwen_tts`` with the shims in place."""
    install()
    return importlib.import_module("qwen_tts")
