"""Attack 11: SIGTERM while an utterance is in flight.

A client speaks a long passage; at its first audio the server gets SIGTERM.
Meanwhile ``/readyz`` (if the build has one) is polled, and a new client
tries to connect half a second after the signal. Figures: whether the
utterance finished (``done``, not cancelled, with all its audio), the close
code the client got, when ``/readyz`` went false relative to the server
refusing connections, whether the newcomer got in, and how long the server
took to exit.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from bench import corpus

from . import wire
from .outcome import Outcome
from .target import Target


async def _readyz(http: httpx.AsyncClient) -> int | str:
    try:
        return (await http.get("/readyz")).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def _poll_readyz(target: Target, since: float, log: list[tuple[float, int | str]]) -> None:
    """Record every change of ``/readyz``'s answer (a fresh connection each time, as a balancer would)."""
    last: int | str | None = None
    while time.monotonic() - since < 30:
        async with target.http(timeout=2) as http:
            now = await _readyz(http)
        if now != last:
            log.append((round(time.monotonic() - since, 2), now))
            last = now
        if isinstance(now, str) and "Connect" in now:
            return  # nothing listens any more
        await asyncio.sleep(0.05)


async def _newcomer(target: Target) -> str:
    ws, why = await wire.try_open(target, open_timeout=5)
    if ws is None:
        return f"refused ({why})"
    try:
        ready = await wire.hello(ws, timeout=5)
    except ConnectionClosed:
        return f"upgraded, then closed {ws.close_code}"
    finally:
        await wire.close_quietly(ws)
    if ready is None:
        return "upgraded, no ready"
    return "ready" if ready.get("type") == "ready" else f"error {ready.get('code')}"


async def drain(target: Target) -> Outcome:
    async with target.http() as http:
        readyz_before = await _readyz(http)
    passage = corpus.load(("long",)).items[0].text
    ws = await wire.open_ws(target)
    await wire.hello(ws)
    await wire.speak(ws, "u", passage)
    first = await wire.next_message(ws, 30)
    sent_at = time.monotonic()
    assert target.process is not None
    target.process.send_signal(signal.SIGTERM)
    readyz: list[tuple[float, int | str]] = []
    poller = asyncio.create_task(_poll_readyz(target, sent_at, readyz))
    await asyncio.sleep(0.5)
    newcomer = await _newcomer(target)
    heard = await wire.listen(ws, "u", cap_s=60)
    if first and first.get("type") == "audio":
        heard.audio_bytes += len(first.get("data") or b"")
    close_code = ws.close_code
    if close_code is None:
        await wire.next_message(ws, 10)
        close_code = ws.close_code
    exited = await asyncio.to_thread(_wait_exit, target, sent_at, 30)
    poller.cancel()
    done = heard.done or {}
    figures: dict[str, Any] = {
        "readyz_before": readyz_before,
        "readyz_after_sigterm": readyz,
        "newcomer_after_0.5s": newcomer,
        "done": bool(heard.done),
        "cancelled": done.get("cancelled"),
        "audio_s_received": round(heard.audio_s, 2),
        "audio_s_in_done": None if "audio_ms" not in done else round(done["audio_ms"] / 1000, 2),
        "close_code": close_code,
        "exited_after_s": exited,
    }
    return Outcome(_cell(figures), figures)


def _wait_exit(target: Target, since: float, limit: float) -> float | None:
    """Seconds from ``since`` (the signal) until the process exited; None if it did not in ``limit``."""
    assert target.process is not None
    try:
        target.process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return None
    return round(time.monotonic() - since, 1)


def _cell(f: dict[str, Any]) -> str:
    if f["done"] and not f["cancelled"]:
        utterance = f"utterance finished ({f['audio_s_received']:.1f} s audio)"
    elif f["done"]:
        utterance = f"utterance cancelled after {f['audio_s_received']:.1f} s audio"
    else:
        utterance = f"utterance cut, no done ({f['audio_s_received']:.1f} s audio)"
    if f["readyz_before"] == 404:
        ready = "no /readyz"
    else:
        first_false = next((f"{code} at +{t:.2f} s" for t, code in f["readyz_after_sigterm"] if code != 200), "never false")
        ready = f"/readyz {first_false}"
    return f"{utterance}; close {f['close_code']}; {ready}; newcomer {f['newcomer_after_0.5s']}; exit after {f['exited_after_s']} s"
