"""Attack 3: idle sockets against a token-protected server, then a real user.

The attacker opens ``max_sessions - 5`` WebSockets with no token and never
says ``hello``; a user with a valid token tries once. The attacker then tops
up with five more (as an attacker would: five free slots are five more
sockets), and the user tries every 2 s for up to 60 s. Meanwhile a few TLS
connections that never send an HTTP request (and bare TCP connections that
never even start TLS) wait to see whether the server ever closes them.
Figures: how long the user was locked out, how many idle sockets the server
accepted and when it closed them, when the silent connections were closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from client import Client

from . import wire
from .outcome import Outcome, secs
from .target import Target

MAX_SESSIONS = 64
TOKEN = "lockout-token-0123456789"
POLL_S = 60.0
SILENT_TLS = 5
SILENT_TCP = 2


async def _closed_after(ws: ClientConnection, started: float) -> tuple[float, int | None]:
    await ws.wait_closed()
    return round(time.monotonic() - started, 1), ws.close_code


async def _eof_after(reader: asyncio.StreamReader, started: float) -> float:
    with contextlib.suppress(OSError, ConnectionError):
        while await reader.read(4096):
            pass
    return round(time.monotonic() - started, 1)


async def _open_idle(target: Target, count: int) -> tuple[list[ClientConnection], list[str]]:
    results = await asyncio.gather(*(wire.try_open(target) for _ in range(count)))
    return [ws for ws, _ in results if ws is not None], [why for ws, why in results if ws is None and why]


async def _user_attempts(target: Target, started: float) -> dict[str, Any]:
    """Connect with the token every 2 s until accepted or ``POLL_S``."""
    attempts, refusals = 0, []
    while True:
        attempts += 1
        try:
            user = await Client.connect(target.ws_url, token=TOKEN, ssl=target.ssl_context())
        except Exception as exc:
            refusals.append(f"{type(exc).__name__}: {str(exc)[:80]}")
        else:
            await user.close()
            return {"accepted_after_s": round(time.monotonic() - started, 2), "attempts": attempts, "refusals": refusals[:3]}
        if time.monotonic() - started + 2 > POLL_S:
            return {"accepted_after_s": None, "attempts": attempts, "refusals": refusals[:3]}
        await asyncio.sleep(2)


async def _user_once(target: Target) -> str:
    try:
        user = await Client.connect(target.ws_url, token=TOKEN, ssl=target.ssl_context())
    except Exception as exc:
        return f"refused ({type(exc).__name__}: {str(exc)[:60]})"
    await user.close()
    return "accepted"


async def idle_sockets(target: Target) -> Outcome:
    idle, failures = await _open_idle(target, MAX_SESSIONS - 5)
    with_five_free = await _user_once(target)
    more, more_failures = await _open_idle(target, 5)  # five free slots invite five more sockets
    idle += more
    silent = [await wire.open_tls(target) for _ in range(SILENT_TLS)]
    bare = [await wire.open_tcp(target) for _ in range(SILENT_TCP)]
    started = time.monotonic()
    socket_closes = [asyncio.create_task(_closed_after(ws, started)) for ws in idle]
    silent_closes = [asyncio.create_task(_eof_after(reader, started)) for reader, _ in silent]
    bare_closes = [asyncio.create_task(_eof_after(reader, started)) for reader, _ in bare]
    user = await _user_attempts(target, started)
    await asyncio.wait([*silent_closes, *bare_closes], timeout=max(0.0, POLL_S - (time.monotonic() - started)))
    figures: dict[str, Any] = {
        "max_sessions": MAX_SESSIONS,
        "user_with_five_free_slots": with_five_free,
        "idle_opened": len(idle),
        "idle_upgrades_refused": [*failures, *more_failures][:3],
        **user,
        "idle_closed": _finished(socket_closes),
        "silent_tls_closed_after_s": _finished(silent_closes),
        "silent_tcp_closed_after_s": _finished(bare_closes),
        "observed_s": POLL_S,
    }
    for task in [*socket_closes, *silent_closes, *bare_closes]:
        task.cancel()
    for ws in idle:
        wire.abort(ws)
    for _, writer in [*silent, *bare]:
        writer.transport.abort()
    return Outcome(_cell(figures), figures)


def _finished(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    return [t.result() for t in tasks if t.done() and not t.cancelled() and t.exception() is None]


def _cell(f: dict[str, Any]) -> str:
    five_free = "in" if f["user_with_five_free_slots"] == "accepted" else "refused"
    if f["accepted_after_s"] is None:
        user = f"user refused for the whole {f['observed_s']:.0f} s"
    else:
        user = f"user in after {secs(f['accepted_after_s'])}"
    user = f"{MAX_SESSIONS - 5} idle: user {five_free}; +5 idle: {user}"
    closes = [c[0] for c in f["idle_closed"]]
    idle = f"{f['idle_opened']} idle upgraded, {len(closes)} closed" + (f" (median {statistics.median(closes):.1f} s)" if closes else "")
    tls = f["silent_tls_closed_after_s"]
    silent = f"silent TLS closed after {statistics.median(tls):.0f} s" if len(tls) == SILENT_TLS else f"{SILENT_TLS - len(tls)}/{SILENT_TLS} silent TLS open at {f['observed_s']:.0f} s"
    return f"{user}; {idle}; {silent}"
