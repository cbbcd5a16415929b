"""What the figures depend on: the environment, CPU use, and the server's own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

_PACKAGES = ("numpy", "websockets", "msgpack", "uvicorn", "starlette", "onnxruntime", "piper-tts", "torch", "transformers", "aiortc")


def environment() -> dict[str, Any]:
    """The machine this benchmark runs on (the server's too when it is on loopback)."""
    memory = psutil.virtual_memory()
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cores_logical": psutil.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(memory.total / 2**30, 1),
        "gpu": _gpus(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "packages": {name: _version(name) for name in _PACKAGES if _version(name)},
        "commit": _git_commit(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    return []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return result.stdout.strip() or None
    return None


@dataclass
class CpuMeter:
    """CPU used between ``begin`` and ``end``: this process, the server (metrics or pid), the machine."""

    server_pid: int | None = None
    _t0: float = 0.0
    _own0: float = 0.0
    _server0: float | None = None
    _machine0: Any = None

    def _server_cpu(self) -> float | None:
        if self.server_pid is None:
            return None
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(self.server_pid)
            times = process.cpu_times()
            return float(times.user + times.system + times.children_user + times.children_system)
        return None

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._own0 = _own_cpu()
        self._server0 = self._server_cpu()
        self._machine0 = psutil.cpu_times()

    def end(self, server_cpu_s: float | None = None) -> dict[str, float | None]:
        """Percent of one core (client, server) and of the whole machine."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        server = server_cpu_s
        if server is None and self._server0 is not None:
            now = self._server_cpu()
            server = None if now is None else now - self._server0
        times = psutil.cpu_times()
        busy = _busy(times) - _busy(self._machine0)
        total = sum(times) - sum(self._machine0)
        client = 100 * (_own_cpu() - self._own0) / wall
        machine = 100 * busy / total if total > 0 else None
        # What other processes used (percent of the machine): on a shared host it says whether a level was disturbed.
        cores = psutil.cpu_count() or 1
        other = None if machine is None or server is None else max(0.0, machine - (client + 100 * server / wall) / cores)
        return {
            "client_pct": round(client, 1),
            "server_pct": None if server is None else round(100 * server / wall, 1),
            "machine_pct": None if machine is None else round(machine, 1),
            "other_pct": None if other is None else round(other, 1),
        }


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _busy(times: Any) -> float:
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class ServerMetrics:
    """Scrapes ``GET /metrics`` (Prometheus text) for CPU, queue depth and the server's histograms."""

    url: str | None
    http: httpx.AsyncClient | None = None
    peak_queue: float = 0.0
    peak_active: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)

    async def scrape(self) -> dict[str, float]:
        if self.url is None or self.http is None:
            return {}
        try:
            response = await self.http.get(self.url)
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        values = flatten(response.text)
        self.peak_queue = max(self.peak_queue, values.get("minestream_engine_queue_depth", 0.0))
        self.peak_active = max(self.peak_active, values.get("minestream_active_utterances", 0.0))
        return values

    async def watch(self, period: float = 1.0) -> None:
        """Peak queue depth and active utterances, until cancelled."""
        while True:
            await self.scrape()
            await asyncio.sleep(period)


def flatten(text: str) -> dict[str, float]:
    """Prometheus text as {name{labels}: value}, plus plain names for unlabelled samples."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items() if k.startswith(prefix)}
