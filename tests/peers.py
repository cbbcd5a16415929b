"""Peers that misbehave on purpose, for the client's timeouts and its router.

``silent_listener`` is a TCP port that accepts connections and never sends
a byte (a hung server, or a firewall that swallows the TLS handshake).
``scripted_server`` is a plain-``ws://`` WebSocket server whose every
connection runs the test's script: answer ``hello`` or not, send message
types v1 does not have, close mid-utterance. Both stop when the test's
``with`` ends.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http import HTTPStatus
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

READY = {
    "type": "ready", "protocol": 1, "session": "s_fake", "format": "pcm_s16le", "sample_rate": 24000,
    "engine": {"name": "fake", "kind": "preview", "models": [], "languages": ["en"], "design": True, "clone": False, "note": ""},
    "limits": {"max_text_chars": 100, "max_ref_seconds": 30.0, "max_open_utterances": 2, "max_message_bytes": 1 << 20},
}
MAX_LISTEN_S = 120.0


@contextmanager
def silent_listener() -> Iterator[int]:
    """The port of a listener that accepts and holds connections, and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        for _ in range(int(MAX_LISTEN_S / 0.1)):  # bounded: the test ends long before
            if stop.is_set():
                return
            try:
                held.append(sock.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, name="silent-listener", daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()


Script = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script, refuse_with: HTTPStatus | None = None) -> AsyncIterator[str]:
    """A ``ws://`` URL whose connections each run ``script`` (or whose upgrades get ``refuse_with``)."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        return None if refuse_with is None else connection.respond(refuse_with, f"{refuse_with.phrase}\n")

    async with serve(script, "127.0.0.1", 0, process_request=process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/stream"


async def receive(ws: ServerConnection) -> dict[str, Any]:
    """The next client message (the client sends msgpack by default)."""
    frame = await ws.recv()
    message = msgpack.unpackb(frame) if isinstance(frame, bytes) else None
    assert isinstance(message, dict), frame
    return message


async def send(ws: ServerConnection, message: dict[str, Any]) -> None:
    await ws.send(msgpack.packb(message, use_bin_type=True))
