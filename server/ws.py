"""The WebSocket transport: frames from the socket to the session and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import connection_token, origin_allowed
from .errors import Overloaded, TooManySessions
from .protocol import Error, encode_frame
from .session import Session
from .state import ServerState

log = logging.getLogger("minestream.ws")

FLUSH_TIMEOUT_S = 2.0
"""How long a closing session's writer may take to send what is queued (a fatal error)."""


async def stream_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.minestream
    if not origin_allowed(websocket, state.settings.allowed_origins):
        await websocket.close(code=1008)  # before accept: the upgrade is refused (403)
        return
    await websocket.accept()
    limit = state.settings.limits.max_sessions
    if len(state.sessions) >= limit:
        refusal = TooManySessions(f"the server is at its limit of {limit} sessions")
        await websocket.send_text(str(encode_frame(Error.of(refusal), binary=False)))
        await websocket.close(code=refusal.close_code)
        return
    token = connection_token(websocket)
    session = state.new_session(authorized=token is not None and state.check_token(token))
    state.sessions.add(session)
    writer = asyncio.create_task(_write(websocket, session), name=f"writer-{session.id}")
    close_code = 1000
    try:
        close_code = await _read(websocket, session)
    finally:
        state.sessions.discard(session)
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=FLUSH_TIMEOUT_S)
        writer.cancel()
        with contextlib.suppress(Exception):
            await websocket.close(code=close_code)


async def _read(websocket: WebSocket, session: Session) -> int:
    """Frames to the session until the client leaves or a fatal error; returns the close code."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("bytes")
            if frame is None:
                frame = message.get("text") or ""
            fatal = await session.receive(frame)
            if fatal is not None:
                return fatal.close_code
    return 1000


async def _write(websocket: WebSocket, session: Session) -> None:
    try:
        while (frame := await session.outbox.next_frame()) is not None:
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
    except Overloaded as exc:
        log.info("closing %s: %s", session.id, exc.message)
        with contextlib.suppress(Exception):
            await websocket.close(code=exc.close_code)
    except Exception:  # the socket went away; the reader sees the disconnect
        log.debug("writer for %s stopped", session.id, exc_info=True)
