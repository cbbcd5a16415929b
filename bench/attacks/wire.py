"""Raw protocol v1 on the wire, for clients that misbehave on purpose.

The project's ``client.Client`` is a well-behaved client (it always reads).
Attacks need more control: a socket that never reads, compression on or off,
frames sent before ``hello``, text frames in a msgpack session, a TLS
connection that never sends a request. These helpers give exactly that and
nothing more; they speak only what docs/protocol.md fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .target import Target

Frame = bytes | str


async def open_ws(
    target: Target,
    *,
    url_token: str | None = None,
    compression: str | None = None,
    max_queue: int | None = 16,
    origin: str | None = None,
    open_timeout: float = 30,
) -> ClientConnection:
    """A WebSocket to the server; no keepalive pings of our own (they would read for us)."""
    url = target.ws_url + (f"?token={url_token}" if url_token else "")
    headers = {"Origin": origin} if origin else None
    return await connect(
        url,
        ssl=target.ssl_context(),
        compression=compression,
        max_size=None,
        max_queue=max_queue,
        ping_interval=None,
        open_timeout=open_timeout,
        close_timeout=2,
        additional_headers=headers,
    )


def encode(message: dict[str, Any], *, binary: bool) -> Frame:
    if binary:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        return packed
    return json.dumps(message, separators=(",", ":"))


def decode(frame: Frame) -> dict[str, Any]:
    message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)
    return message if isinstance(message, dict) else {"type": "?", "value": message}


async def next_message(ws: ClientConnection, timeout: float) -> dict[str, Any] | None:
    """The next message, or None on timeout or once the connection is closed."""
    try:
        return decode(await asyncio.wait_for(ws.recv(), timeout))
    except (asyncio.TimeoutError, ConnectionClosed):
        return None


async def hello(ws: ClientConnection, *, binary: bool = True, token: str | None = None, timeout: float = 30) -> dict[str, Any] | None:
    """Send ``hello``; the ``ready`` (or ``error``) that answers it."""
    message: dict[str, Any] = {"type": "hello", "protocol": 1}
    if token is not None:
        message["token"] = token
    await ws.send(encode(message, binary=binary))
    while (reply := await next_message(ws, timeout)) is not None:
        if reply.get("type") in ("ready", "error"):
            return reply
    return None


async def answers_ping(ws: ClientConnection, *, binary: bool, timeout: float = 10) -> bool:
    """Whether the session still answers a ping (other messages in between are skipped)."""
    t = "alive-" + secrets.token_hex(4)
    try:
        await ws.send(encode({"type": "ping", "t": t}, binary=binary))
    except ConnectionClosed:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        reply = await next_message(ws, left)
        if reply is None:
            return False
        if reply.get("type") == "pong" and reply.get("t") == t:
            return True
    return False


def client_port(ws: ClientConnection) -> int:
    return int(ws.transport.get_extra_info("sockname")[1])


def abort(ws: ClientConnection) -> None:
    """Leave without a closing handshake (a client that just goes away)."""
    ws.transport.abort()


async def close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 3)
    abort(ws)


async def try_open(target: Target, **kwargs: Any) -> tuple[ClientConnection | None, str | None]:
    """A WebSocket, or None and why the upgrade failed (an HTTP status, a reset)."""
    try:
        return await open_ws(target, **kwargs), None
    except InvalidStatus as exc:
        return None, f"HTTP {exc.response.status_code}"
    except (OSError, asyncio.TimeoutError, ConnectionClosed) as exc:
        return None, type(exc).__name__


async def open_tls(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection with its handshake done and nothing sent."""
    return await asyncio.open_connection("127.0.0.1", target.port, ssl=target.ssl_context(), server_hostname="127.0.0.1")


async def open_tcp(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP connection: not even a TLS ClientHello."""
    return await asyncio.open_connection("127.0.0.1", target.port)


CANCEL_GRACE_S = 30.0
"""How long ``done`` may take to follow a ``cancel``."""
BYTES_PER_SECOND = 2 * 24000
"""pcm_s16le at the default 24 kHz: what ``hello`` without a format asks for."""


@dataclass
class Heard:
    """What came back for one utterance."""

    audio_bytes: int = 0
    first_audio_s: float | None = None
    max_gap_s: float = 0.0
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    cancelled_at_s: float | None = None
    closed: bool = False

    @property
    def audio_s(self) -> float:
        return self.audio_bytes / BYTES_PER_SECOND

    @property
    def cancel_to_done_s(self) -> float | None:
        if self.cancelled_at_s is None or self.done is None:
            return None
        return self.wall_s - self.cancelled_at_s


async def speak(ws: ClientConnection, uid: str, text: str, *, design: str = "a calm, clear narrator", binary: bool = True) -> None:
    await ws.send(encode({"type": "speak", "id": uid, "text": text, "voice": {"design": design}}, binary=binary))


async def listen(ws: ClientConnection, uid: str, *, cap_s: float, cancel_after_audio_s: float | None = None, binary: bool = True) -> Heard:
    """Read until ``done`` for ``uid`` (or ``cap_s``, then cancel and wait for ``done`` a while longer).

    ``cancel_after_audio_s`` cancels that long after the first audio instead.
    """
    heard = Heard()
    loop = asyncio.get_running_loop()
    started = last = loop.time()
    cancel_at = started + cap_s
    while heard.done is None:
        now = loop.time()
        if heard.cancelled_at_s is None and now >= cancel_at:
            heard.cancelled_at_s = now - started
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode({"type": "cancel", "id": uid}, binary=binary))
        if heard.cancelled_at_s is None:
            wait = cancel_at - now
        else:
            wait = started + heard.cancelled_at_s + CANCEL_GRACE_S - now
            if wait <= 0:
                break
        try:
            message = decode(await asyncio.wait_for(ws.recv(), max(wait, 0.01)))
        except asyncio.TimeoutError:
            continue
        except ConnectionClosed:
            heard.closed = True
            break
        now = loop.time()
        if message.get("id") != uid:
            continue
        kind = message.get("type")
        if kind == "audio":
            data = message.get("data")
            heard.audio_bytes += len(data) if isinstance(data, (bytes, str)) else 0
            if heard.first_audio_s is None:
                heard.first_audio_s = now - started
                if cancel_after_audio_s is not None:
                    cancel_at = now + cancel_after_audio_s
            heard.max_gap_s = max(heard.max_gap_s, now - last)
            last = now
        elif kind == "error":
            heard.errors.append(message)
        elif kind == "done":
            heard.done = message
    heard.wall_s = loop.time() - started
    return heard


def masked_frame(payload: Frame) -> bytes:
    """One client frame, ready to write: text or binary, FIN, masked with the all-zero key (so the payload reads as is)."""
    data = payload.encode() if isinstance(payload, str) else payload
    opcode = 0x1 if isinstance(payload, str) else 0x2
    if len(data) < 126:
        header = bytes([0x80 | opcode, 0x80 | len(data)])
    elif len(data) < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + len(data).to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + len(data).to_bytes(8, "big")
    return header + b"\0\0\0\0" + data


async def write_raw(ws: ClientConnection, data: bytes, timeout: float, high_water: int = 1 << 20) -> None:
    """Bytes straight onto the connection's transport, waiting (up to ``timeout``) while its buffer is full."""
    transport = ws.transport
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while transport.get_write_buffer_size() > high_water:
        if transport.is_closing():
            raise ConnectionResetError("the connection is closing")
        if loop.time() > deadline:
            raise asyncio.TimeoutError
        await asyncio.sleep(0.005)
    if transport.is_closing():
        raise ConnectionResetError("the connection is closing")
    transport.write(data)
