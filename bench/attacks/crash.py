"""Attack 9: kill -9 during voice saves, restart, look for leftovers.

Uploaders clone voices over HTTP without pause; after ``UPLOAD_FIRST_S`` a
watcher thread looks at the library folder every few milliseconds, and the
moment a new voice folder is there but not complete (no ``reference.wav``
yet, or a temp file in it), the server gets SIGKILL, so the kill lands inside
a save. (If no save is seen
within ``KILL_AFTER_S``, it is killed anyway.) After each kill the server is
started again on the same data. Figures, after the last restart: voice
folders the library does not list (orphans), temp files, and acknowledged
voices that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .origin import reference_wav
from .outcome import Outcome
from .target import Target

CYCLES = 3
UPLOADERS = 8
KILL_AFTER_S = 5.0
UPLOAD_FIRST_S = 2.0


def _incomplete(folder: Path) -> bool:
    names = {entry.name for entry in os.scandir(folder)}
    return "reference.wav" not in names or any(name.endswith(".tmp") for name in names)


def _watch_and_kill(target: Target) -> bool:
    """SIGKILL the server as soon as a save is seen in progress; whether one was."""
    voices = target.data_dir / "voices"
    # Folders from before this cycle (an earlier kill's leftovers among them) are not a save in progress.
    complete = {entry.name for entry in os.scandir(voices)} if voices.exists() else set()
    deadline = time.monotonic() + KILL_AFTER_S
    caught = False
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for entry in os.scandir(voices):
                if entry.name in complete or not entry.is_dir():
                    continue
                with contextlib.suppress(OSError):
                    if _incomplete(Path(entry.path)):
                        caught = True
                        break
                    complete.add(entry.name)
        if caught:
            break
        time.sleep(0.002)
    os.kill(target.pid, signal.SIGKILL)
    return caught


async def _upload_until_killed(target: Target, wav: bytes, killed: threading.Event, acked: set[str]) -> None:
    async with target.http(timeout=30) as http:
        while not killed.is_set():
            try:
                response = await http.post("/v1/voices", files={"file": ("me.wav", wav, "audio/wav")}, data={"name": "crash"})
            except httpx.HTTPError:
                return
            if response.status_code == 201:
                acked.add(response.json()["id"])


def _leftovers(data_dir: Path, listed: set[str] | None) -> dict[str, int]:
    voices = data_dir / "voices"
    folders = [p for p in voices.iterdir() if p.is_dir()] if voices.exists() else []
    out = {
        "folders": len(folders),
        "incomplete_folders": sum(_incomplete(p) for p in folders),
        "tmp_files": sum(1 for p in data_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")),
    }
    if listed is not None:
        out["orphan_folders"] = sum(p.name not in listed for p in folders)
    return out


async def crash_saves(target: Target) -> Outcome:
    async with target.http() as http:
        wav = await reference_wav(http)
    acked: set[str] = set()
    cycles: list[dict[str, Any]] = []
    for _ in range(CYCLES):
        killed, before = threading.Event(), len(acked)
        uploaders = [asyncio.create_task(_upload_until_killed(target, wav, killed, acked)) for _ in range(UPLOADERS)]
        await asyncio.sleep(UPLOAD_FIRST_S)  # some voices acknowledged first, so "lost" means something
        caught = await asyncio.to_thread(_watch_and_kill, target)
        killed.set()
        await asyncio.to_thread(target.kill)  # reaps the killed process
        await asyncio.gather(*uploaders, return_exceptions=True)
        cycles.append({"killed_mid_save": caught, "acked": len(acked) - before, **_leftovers(target.data_dir, None)})
        await asyncio.to_thread(target.start)
    async with target.http() as http:
        listed = {v["id"] for v in (await http.get("/v1/voices")).json()["voices"]}
    after = _leftovers(target.data_dir, listed)
    figures: dict[str, Any] = {
        "cycles": cycles,
        "kills": CYCLES,
        "kills_mid_save": sum(c["killed_mid_save"] for c in cycles),
        "acked": len(acked),
        "lost": len(acked - listed),
        "after_restart": after,
    }
    cell = (f"after restart: {after['orphan_folders']} orphan folders, {after['tmp_files']} temp files "
            f"({CYCLES} kills, {figures['kills_mid_save']} mid-save; {len(acked)} voices acknowledged, {figures['lost']} lost)")
    return Outcome(cell, figures)
