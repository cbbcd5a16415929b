"""Watching a server while an attack runs: its memory and temp files, sampled.

``async with Watch(target) as watch:`` records the server's resident memory
(and, when asked, the bytes it holds in temp files) every ``interval``
seconds. The peak also takes ``VmHWM`` into account, so a spike between two
samples is not missed (the process is fresh, so its high-water mark before
the attack is its start-up's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from . import procfs
from .target import Target

MIB = procfs.MIB


def mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


class Watch:
    def __init__(self, target: Target, *, interval: float = 0.1, temp: bool = False) -> None:
        self.target = target
        self.interval = interval
        self.temp = temp
        self.baseline = procfs.memory(target.pid)
        self.peak_rss = self.baseline.rss
        self.last: procfs.Memory = self.baseline
        self.temp_peak = 0
        self.timeline: list[tuple[float, int]] = []
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run(), name="watch")
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    async def _run(self) -> None:
        while True:
            if not self.sample():
                return
            await asyncio.sleep(self.interval)

    def sample(self) -> bool:
        """One sample; False once the process is gone."""
        try:
            now = procfs.memory(self.target.pid)
            temp = procfs.open_file_bytes(self.target.pid, self.target.tmp_dir) + procfs.folder_bytes(self.target.tmp_dir) if self.temp else 0
        except (OSError, RuntimeError, KeyError):
            return False
        self.last = now
        self.peak_rss = max(self.peak_rss, now.rss, now.hwm if now.hwm > self.baseline.hwm else 0)
        self.temp_peak = max(self.temp_peak, temp)
        self.timeline.append((round(time.monotonic() - self.started, 2), now.rss))
        return True

    @property
    def growth(self) -> int:
        return self.peak_rss - self.baseline.rss

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rss_before_mib": mib(self.baseline.rss),
            "rss_peak_mib": mib(self.peak_rss),
            "rss_growth_mib": mib(self.growth),
            "rss_end_mib": mib(self.last.rss),
        }
        if self.temp:
            out["temp_peak_mib"] = mib(self.temp_peak)
        return out


async def settled_rss(target: Target, seconds: float = 3.0) -> float | None:
    """Resident memory (MiB) after ``seconds`` of quiet: whether a spike was given back."""
    await asyncio.sleep(seconds)
    with contextlib.suppress(OSError, KeyError):
        return mib(procfs.memory(target.pid).rss)
    return None
