"""Which Qwen3-TTS models are resident, and swapping them when both don't fit.

VoiceDesign and Base together need about 8 GB in bf16. When the free memory
(or a configured budget) holds both plus a working reserve, both stay
resident. Otherwise one is resident at a time: a scheduler that needs the
other one waits until the resident model's streams drain, then the least
recently used model is unloaded and the wanted one loaded, and the swap time
is recorded for ``/healthz``.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import local_snapshot

logger = logging.getLogger("minestream.qwen")

KINDS = ("design", "base")
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_FALLBACK_WEIGHT_BYTES = int(4.3e9)  # a 1.7B checkpoint in bf16, when its files can't be seen
_GPU_RESERVE = 2 << 30  # KV caches and activations of a few dozen streams


def estimate_bytes(source: str, dtype: torch.dtype) -> int:
    """Weights once loaded in ``dtype``: file sizes rescaled from the stored dtype."""
    path = local_snapshot(source)
    if path is None:
        return _FALLBACK_WEIGHT_BYTES * (torch.finfo(dtype).bits // 8) // 2
    stored = json.loads((path / "config.json").read_text()).get("torch_dtype") or "bfloat16"
    files = sum(f.stat().st_size for f in path.rglob("*.safetensors")) or sum(f.stat().st_size for f in path.rglob("*.bin"))
    return files * (torch.finfo(dtype).bits // 8) // _DTYPE_BYTES.get(str(stored), 2)


@dataclass
class Slot:
    kind: str
    source: str
    need_bytes: int
    model: Any = None
    leases: int = 0
    last_used: float = 0.0
    load_s: float | None = None


class ModelManager:
    """Loads models on demand under a memory figure; ``acquire``/``release`` from worker threads."""

    def __init__(
        self,
        sources: dict[str, str],
        *,
        device: str,
        dtype: torch.dtype,
        memory_budget_bytes: int | None = None,
        loader: Callable[[str], Any] | None = None,
        flash_attention: bool = True,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.flash_attention = flash_attention
        self._loader = loader or self._load
        self._slots = {k: Slot(k, s, estimate_bytes(s, dtype)) for k, s in sources.items()}
        self.budget = self._memory_figure(memory_budget_bytes)
        reserve = _GPU_RESERVE if memory_budget_bytes is None and device.startswith("cuda") else 0
        total = sum(s.need_bytes for s in self._slots.values()) + reserve
        self.mode = "both" if self.budget is None or total <= self.budget else "one"
        self._cond = threading.Condition()
        self._wanted: set[str] = set()
        self.swaps: list[float] = []

    def _memory_figure(self, budget: int | None) -> int | None:
        if budget is not None:
            return budget
        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return int(free)
        return None  # CPU: host memory is not the constraint this policy is about

    def _load(self, source: str) -> Any:
        from .compat import import_qwen_tts

        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.device != "cpu":
            kwargs["device_map"] = self.device
            if self.flash_attention and _has_flash_attn():
                kwargs["attn_implementation"] = "flash_attention_2"
        model = import_qwen_tts().Qwen3TTSModel.from_pretrained(source, **kwargs)
        model.model.eval()
        return model

    def preload(self) -> None:
        """Load what the mode keeps resident from the start (both, or the clone model)."""
        for kind in self._slots if self.mode == "both" else ["base" if "base" in self._slots else "design"]:
            self.acquire(kind)
            self.release(kind)

    def acquire(self, kind: str) -> Any:
        """The loaded model for ``kind``, loading (and evicting) as needed. Blocks."""
        with self._cond:
            slot = self._slots[kind]
            swap_started: float | None = None
            while slot.model is None:
                if self._fits(kind):
                    started = time.monotonic()
                    slot.model = self._loader(slot.source)
                    slot.load_s = time.monotonic() - started
                    if swap_started is not None:
                        self.swaps.append(time.monotonic() - swap_started)
                        logger.info("swapped in %s in %.2fs", kind, self.swaps[-1])
                    break
                victim = self._idle_victim(kind)
                if victim is None:
                    self._wanted.add(kind)
                    self._cond.wait()
                    continue
                swap_started = time.monotonic()
                self._unload(victim)
            self._wanted.discard(kind)
            slot.leases += 1
            slot.last_used = time.monotonic()
            return slot.model

    def release(self, kind: str) -> None:
        with self._cond:
            slot = self._slots[kind]
            slot.leases -= 1
            slot.last_used = time.monotonic()
            self._cond.notify_all()

    def should_yield(self, kind: str) -> bool:
        """True when another kind waits for the memory ``kind`` holds: drain, don't admit."""
        return bool(self._wanted - {kind})

    def _fits(self, kind: str) -> bool:
        if self.mode == "both":
            return True
        resident = sum(s.need_bytes for s in self._slots.values() if s.model is not None)
        return not resident or resident + self._slots[kind].need_bytes <= (self.budget or 0)

    def _idle_victim(self, kind: str) -> Slot | None:
        idle = [s for s in self._slots.values() if s.kind != kind and s.model is not None and s.leases == 0]
        return min(idle, key=lambda s: s.last_used) if idle else None

    def _unload(self, slot: Slot) -> None:
        slot.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("unloaded %s", slot.kind)

    def close(self) -> None:
        with self._cond:
            for slot in self._slots.values():
                slot.model = None
            self._cond.notify_all()
        gc.collect()

    def resident(self) -> list[str]:
        return [s.kind for s in self._slots.values() if s.model is not None]

    def loaded(self) -> dict[str, Any]:
        """The resident models by kind (read from any thread, for health reports)."""
        return {s.kind: s.model for s in self._slots.values() if s.model is not None}

    def health(self) -> dict[str, Any]:
        return {
            "memory_mode": self.mode,
            "memory_budget_bytes": self.budget,
            "resident": self.resident(),
            "models": {
                s.kind: {"source": s.source, "resident": s.model is not None, "bytes": s.need_bytes, "load_s": s.load_s}
                for s in self._slots.values()
            },
            "swaps": len(self.swaps),
            "last_swap_s": round(self.swaps[-1], 3) if self.swaps else None,
            "waiting_for_swap": sorted(self._wanted),
        }


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None
