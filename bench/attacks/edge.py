"""Attack 10: frames at the edges of the decoders.

* A JSON frame nested 200,000 deep (400 KB, under the message limit), and
  its msgpack twin: which error code comes back, and does the session still
  answer a ping?
* In a msgpack session, JSON text frames with a lone surrogate (``\\ud800``)
  where the server echoes text back (``ping.t``, an ``id``): what comes
  back, and does the session still answer a (msgpack) ping afterwards?
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection

from . import wire
from .outcome import Outcome
from .target import Target

DEPTH = 200_000


async def _reply(ws: ClientConnection, timeout: float = 3) -> str:
    """The first reply's type (and error code), or what happened instead."""
    message = await wire.next_message(ws, timeout)
    if message is None:
        return "closed" if ws.close_code is not None else f"nothing in {timeout:.0f} s"
    if message.get("type") == "error":
        return f"error {message.get('code')}"
    return str(message.get("type"))


async def _probe(target: Target, frame: wire.Frame, *, binary_session: bool) -> dict[str, Any]:
    ws = await wire.open_ws(target)
    try:
        await wire.hello(ws, binary=binary_session)
        await ws.send(frame)
        reply = await _reply(ws)
        alive = await wire.answers_ping(ws, binary=binary_session, timeout=5)
    finally:
        await wire.close_quietly(ws)
    return {"reply": reply, "answers_ping_after": alive}


async def edge_cases(target: Target) -> Outcome:
    deep_json = '{"type":"ping","t":' + "[" * DEPTH + "]" * DEPTH + "}"
    deep_msgpack = b"\x82\xa4type\xa4ping\xa1t" + b"\x91" * DEPTH + b"\xc0"
    probes = {
        "deep JSON": await _probe(target, deep_json, binary_session=False),
        "deep msgpack": await _probe(target, deep_msgpack, binary_session=True),
        "surrogate ping.t": await _probe(target, '{"type":"ping","t":"\\ud800"}', binary_session=True),
        "surrogate id": await _probe(target, '{"type":"cancel","id":"\\ud800"}', binary_session=True),
    }
    parts = [f"{name}: {p['reply']}, " + ("then answers a ping" if p["answers_ping_after"] else "then SILENT") for name, p in probes.items()]
    return Outcome("; ".join(parts), {"depth": DEPTH, "probes": probes})
