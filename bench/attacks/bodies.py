"""Attack 6: request bodies far over the limits, sent chunked (no Content-Length to check).

The body is generated lazily, 64 KiB at a time, and written to a raw TLS
connection while a reader waits for the server's answer; sending stops as
soon as the server answers or closes. Figures: what the client managed to
send (a few MiB of it may still sit in socket buffers), what the server
process read (``rchar``: its socket reads; the server is otherwise idle),
the status, how long it took, and the server's memory and temp files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from . import procfs, wire
from .outcome import Outcome, mb, secs
from .target import Target
from .watch import Watch

PIECE = 64 << 10
JSON_BYTES = 300_000_000
MULTIPART_BYTES = 1_000_000_000
LIMIT_S = 90.0
BOUNDARY = "attack-boundary-7d1f"


def json_body(total: int) -> Iterator[bytes]:
    head, tail = b'{"model":"tts-1","voice":"alloy","input":"', b'"}'
    yield head
    filler = b"a" * PIECE
    left = total - len(head) - len(tail)
    while left > 0:
        yield filler[: min(PIECE, left)]
        left -= PIECE
    yield tail


def multipart_body(total: int) -> Iterator[bytes]:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    yield head
    filler = bytes(PIECE)
    left = total - len(head) - len(tail)
    while left > 0:
        yield filler[: min(PIECE, left)]
        left -= PIECE
    yield tail


async def post_chunked(target: Target, path: str, content_type: str, body: Iterator[bytes]) -> dict[str, Any]:
    """Send ``body`` chunked until the server answers or closes; what happened."""
    reader, writer = await wire.open_tls(target)
    writer.write(
        (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nContent-Type: {content_type}\r\n"
         "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    )
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    started = time.monotonic()
    sent, finished, stopped_by = 0, False, "limit_s"
    try:
        for piece in body:
            if answer.done():
                stopped_by = "answer"
                break
            left = LIMIT_S - (time.monotonic() - started)
            if left <= 0:
                break
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            try:
                await asyncio.wait_for(writer.drain(), left)
            except (ConnectionError, OSError):
                stopped_by = "closed"
                break
            except asyncio.TimeoutError:
                stopped_by = "server stopped reading"
                break
            sent += len(piece)
        else:
            finished, stopped_by = True, "all sent"
            writer.write(b"0\r\n\r\n")
        status: int | None = None
        try:
            head = await asyncio.wait_for(answer, 30)
            status = int(head.split(b" ", 2)[1])
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, IndexError):
            pass
    finally:
        answer.cancel()
        writer.transport.abort()
    return {"status": status, "sent_mib": round(sent / procfs.MIB, 1), "all_sent": finished, "stopped_by": stopped_by,
            "answered_after_s": round(time.monotonic() - started, 2)}


async def _attack(target: Target, path: str, content_type: str, body: Iterator[bytes], total: int) -> Outcome:
    read_before = procfs.bytes_read(target.pid)
    async with Watch(target, temp=True) as watch:
        result = await post_chunked(target, path, content_type, body)
        await asyncio.sleep(0.5)
    figures = {"body_bytes": total, **result, "server_read_mib": round((procfs.bytes_read(target.pid) - read_before) / procfs.MIB, 1),
               **watch.figures()}
    status = "no answer" if figures["status"] is None else f"HTTP {figures['status']}"
    cell = (f"{status} after {figures['sent_mib']:,.0f} MiB sent, {figures['server_read_mib']:,.0f} MiB read by the server "
            f"({secs(figures['answered_after_s'])}); RSS {mb(figures['rss_growth_mib'])}; temp files {mb(figures['temp_peak_mib'])}")
    return Outcome(cell, figures)


async def json_speech(target: Target) -> Outcome:
    """6a: 300 MB of JSON to POST /v1/audio/speech."""
    return await _attack(target, "/v1/audio/speech", "application/json", json_body(JSON_BYTES), JSON_BYTES)


async def multipart_voice(target: Target) -> Outcome:
    """6b: a 1 GB multipart upload to POST /v1/voices."""
    return await _attack(target, "/v1/voices", f"multipart/form-data; boundary={BOUNDARY}", multipart_body(MULTIPART_BYTES), MULTIPART_BYTES)
