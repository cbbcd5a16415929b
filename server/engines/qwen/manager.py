"""Which Qwen3-TTS models are resident, how many decode rows each gets, and swapping when both don't fit.

Memory is decided once, up front (``start``): the weights of both models,
plus, per decode row, a row's share of each model's batch (its keys and values
for ``max_len`` positions in every talker layer, its trailing text, its
sampling buffers, its codec state), plus a reserve for activations, graph
pools and the allocator's slack, against the free GPU memory (or a configured
budget). If both models fit with at least ``MIN_SHARED_ROWS`` rows each (or
``max_rows``, if smaller), both stay resident with as many rows as fit.
Otherwise one is resident at a time, with the rows the memory holds for it: a
scheduler that needs the other one waits until the resident model's streams
drain, then the least recently used model is unloaded and the wanted one
loaded, and the swap time is recorded for ``/healthz``.

A model's runtime (batch, graphs, codec) is made when it is loaded and goes
when it is unloaded; a stream that finds no free row waits for one.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ...errors import EngineError, Unavailable
from . import local_snapshot

logger = logging.getLogger("minestream.qwen")

KINDS = ("design", "base")
MIN_SHARED_ROWS = 8
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_FALLBACK_WEIGHT_BYTES = int(4.3e9)  # a 1.7B checkpoint in bf16, when its files can't be seen
_GPU_RESERVE = 3 << 30  # per resident model: activations (prefill, codec), its own graph pool, cuBLAS workspaces, slack
_CODEC_ROW_BYTES = 8 << 20  # a stateful codec's per-row state (its windows and carried convolution inputs)
_FALLBACK_TALKER = {"num_hidden_layers": 28, "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 2048, "vocab_size": 3072,
                    "code_predictor_config": {"num_hidden_layers": 5, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 2048}}  # fmt: skip


class RuntimeBuilder(Protocol):
    """Makes a loaded model's runtime (``runtime.RuntimeFactory``)."""

    def build(self, kind: str, tts: Any, rows: int) -> Any: ...


def estimate_bytes(source: str, dtype: torch.dtype) -> int:
    """Weights once loaded in ``dtype``: file sizes rescaled from the stored dtype."""
    path = local_snapshot(source)
    if path is None:
        return _FALLBACK_WEIGHT_BYTES * (torch.finfo(dtype).bits // 8) // 2
    stored = json.loads((path / "config.json").read_text()).get("torch_dtype") or "bfloat16"
    files = sum(f.stat().st_size for f in path.rglob("*.safetensors")) or sum(f.stat().st_size for f in path.rglob("*.bin"))
    return files * (torch.finfo(dtype).bits // 8) // _DTYPE_BYTES.get(str(stored), 2)


def row_bytes(talker: dict[str, Any], dtype: torch.dtype, max_len: int, max_text: int) -> int:
    """Device memory one decode row takes in a model's batch, from its ``talker_config``."""
    size = torch.finfo(dtype).bits // 8
    predictor = talker.get("code_predictor_config") or {}
    groups = int(talker.get("num_code_groups", 16)) - 1

    def kv(config: dict[str, Any], positions: int) -> int:
        heads = int(config.get("num_attention_heads", 16))
        head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 2048)) // heads)
        return int(config["num_hidden_layers"]) * 2 * int(config.get("num_key_value_heads", heads)) * positions * head_dim * size

    hidden, vocab = int(talker["hidden_size"]), int(talker["vocab_size"])
    sampling = 2 * vocab + 4 * (vocab + groups * int(predictor.get("vocab_size", 2048)))  # masks, noise
    return kv(talker, max_len) + kv(predictor, groups + 1) + (max_text + 2) * hidden * size + sampling + _CODEC_ROW_BYTES


def folded_bytes(talker: dict[str, Any], dtype: torch.dtype) -> int:
    """The folded code predictor's own copies (``folded_predictor.py``): its heads, input tables and fused weights."""
    size = torch.finfo(dtype).bits // 8
    p = talker.get("code_predictor_config") or {}
    hidden, vocab = int(p.get("hidden_size", 1024)), int(p.get("vocab_size", 2048))
    heads = int(p.get("num_attention_heads", 16))
    head_dim = int(p.get("head_dim") or hidden // heads)
    qkv = (heads + 2 * int(p.get("num_key_value_heads", heads))) * head_dim * hidden
    gate_up = 2 * int(p.get("intermediate_size", 3072)) * hidden
    groups = int(talker.get("num_code_groups", 16)) - 1
    tables = 2 * groups * vocab * hidden + int(talker["vocab_size"]) * hidden
    return (int(p["num_hidden_layers"]) * (qkv + gate_up) + tables) * size


def talker_config(source: str) -> dict[str, Any]:
    path = local_snapshot(source)
    if path is None:
        return dict(_FALLBACK_TALKER)
    config: dict[str, Any] = json.loads((Path(path) / "config.json").read_text())["talker_config"]
    return config


def plan_memory(
    weights: dict[str, int], per_row: dict[str, int], budget: int | None, *, reserve: int, max_rows: int
) -> tuple[str, dict[str, int]]:
    """("both" or "one", rows per model) for these weights and per-row costs in ``budget`` bytes (None: no limit);
    ``reserve`` is set aside for each resident model."""
    if budget is None:
        return "both", {kind: max_rows for kind in weights}
    spare = budget - sum(weights.values()) - reserve * len(weights)
    shared = min(max_rows, spare // sum(per_row.values())) if spare > 0 else 0
    if shared >= min(max_rows, MIN_SHARED_ROWS):
        return "both", {kind: int(shared) for kind in weights}
    alone = {kind: min(max_rows, max(0, budget - weights[kind] - reserve) // per_row[kind]) for kind in weights}
    if min(alone.values()) < 1:
        need = {kind: weights[kind] + reserve + per_row[kind] for kind in weights}
        raise EngineError(f"not enough memory for the Qwen models: {budget} bytes, need at least {max(need.values())}")
    return "one", {kind: int(rows) for kind, rows in alone.items()}


@dataclass
class Resident:
    kind: str
    source: str
    need_bytes: int
    rows: int = 0
    runtime: Any = None
    leases: int = 0
    last_used: float = 0.0
    load_s: float | None = None


class ModelManager:
    """Loads models on demand under the memory plan; ``acquire``/``release`` from the schedulers' threads."""

    def __init__(
        self,
        sources: dict[str, str],
        runtimes: RuntimeBuilder,
        *,
        device: str,
        dtype: torch.dtype,
        max_rows: int,
        max_len: int,
        max_text: int,
        memory_budget_bytes: int | None = None,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        self.sources = sources
        self.runtimes = runtimes
        self.device = device
        self.dtype = dtype
        self.max_rows, self.max_len, self.max_text = max_rows, max_len, max_text
        self.configured_budget = memory_budget_bytes
        self.loader = loader or self._load
        self.budget: int | None = None
        self.mode = "both"
        self._residents: dict[str, Resident] = {}
        self._cond = threading.Condition()
        self._wanted: set[str] = set()
        self._closed = False
        self.swaps: list[float] = []

    # -- the plan ------------------------------------------------------------------------------

    def start(self) -> None:
        """Decide the memory plan, then load what it keeps resident from the start (both, or Base)."""
        configs = {kind: talker_config(source) for kind, source in self.sources.items()}
        weights = {kind: estimate_bytes(source, self.dtype) + folded_bytes(configs[kind], self.dtype) for kind, source in self.sources.items()}
        per_row = {kind: row_bytes(configs[kind], self.dtype, self.max_len, self.max_text) for kind in self.sources}
        self.budget = self._memory_figure()
        reserve = _GPU_RESERVE if self.configured_budget is None and self.device.startswith("cuda") else 0
        self.mode, rows = plan_memory(weights, per_row, self.budget, reserve=reserve, max_rows=self.max_rows)
        self._residents = {k: Resident(k, s, weights[k], rows[k]) for k, s in self.sources.items()}
        logger.info("qwen memory plan: %s resident, rows %s (%s bytes per row)", self.mode, rows, per_row)
        first = list(self._residents) if self.mode == "both" else ["base" if "base" in self._residents else next(iter(self._residents))]
        for kind in first:
            self.acquire(kind)
            self.release(kind)

    def _memory_figure(self) -> int | None:
        if self.configured_budget is not None:
            return self.configured_budget
        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return int(free)
        return None  # CPU: host memory is not the constraint this policy is about

    def _load(self, source: str) -> Any:
        from .compat import import_qwen_tts

        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.device != "cpu":
            kwargs["device_map"] = self.device
        model = import_qwen_tts().Qwen3TTSModel.from_pretrained(source, **kwargs)
        model.model.eval()
        return model

    # -- leases --------------------------------------------------------------------------------

    def acquire(self, kind: str) -> Any:
        """The runtime of ``kind``'s model, loading (and evicting) as needed. Blocks."""
        with self._cond:
            resident = self._residents[kind]
            swap_started: float | None = None
            while resident.runtime is None:
                if self._closed:
                    raise Unavailable("the engine is shutting down")
                if self._fits(kind):
                    started = time.monotonic()
                    resident.runtime = self.runtimes.build(kind, self.loader(resident.source), resident.rows)
                    resident.load_s = time.monotonic() - started
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
            resident.leases += 1
            resident.last_used = time.monotonic()
            return resident.runtime

    def release(self, kind: str) -> None:
        with self._cond:
            resident = self._residents[kind]
            resident.leases -= 1
            resident.last_used = time.monotonic()
            self._cond.notify_all()

    def should_yield(self, kind: str) -> bool:
        """True when another kind waits for the memory ``kind`` holds: drain, don't admit."""
        return bool(self._wanted - {kind})

    def _fits(self, kind: str) -> bool:
        return self.mode == "both" or not any(r.runtime is not None for r in self._residents.values())

    def _idle_victim(self, kind: str) -> Resident | None:
        idle = [r for r in self._residents.values() if r.kind != kind and r.runtime is not None and r.leases == 0]
        return min(idle, key=lambda r: r.last_used) if idle else None

    def _unload(self, resident: Resident) -> None:
        resident.runtime = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("unloaded %s", resident.kind)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for resident in self._residents.values():
                resident.runtime = None
            self._cond.notify_all()
        gc.collect()

    # -- reports -------------------------------------------------------------------------------

    def resident(self) -> list[str]:
        return [r.kind for r in self._residents.values() if r.runtime is not None]

    def loaded(self) -> dict[str, Any]:
        """The resident runtimes by kind (read from any thread, for health reports)."""
        return {r.kind: r.runtime for r in self._residents.values() if r.runtime is not None}

    def health(self) -> dict[str, Any]:
        return {
            "memory_mode": self.mode,
            "memory_budget_bytes": self.budget,
            "resident": self.resident(),
            "models": {
                r.kind: {"source": r.source, "resident": r.runtime is not None, "bytes": r.need_bytes, "rows": r.rows, "load_s": r.load_s}
                for r in self._residents.values()
            },
            "swaps": len(self.swaps),
            "last_swap_s": round(self.swaps[-1], 3) if self.swaps else None,
            "waiting_for_swap": sorted(self._wanted),
        }
