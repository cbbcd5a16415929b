"""The WebSocket transport: frames from the socket to the session and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import connection_token, origin_allowed
from .errors import LimitExceeded
from .protocol import encode_frame, error_message
from .session import Session
from .state import ServerState

log = logging.getLogger("minestream.ws")


class TooManySessions(LimitExceeded):
    fatal = True
    close_code = 1013  # try again later


async def stream_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.minestream
    if not origin_allowed(websocket, state.settings.allowed_origins):
        await websocket.close(code=1008)  # before accept: the upgrade is refused (403)
        return
    await websocket.accept()
    if len(state.sessions) >= state.settings.limits.max_sessions:
        error = TooManySessions(f"the server is at its limit of {state.settings.limits.max_sessions} sessions")
        await websocket.send_text(str(encode_frame(error_message(error), binary=False)))
        await websocket.close(code=error.close_code)
        return
    token = connection_token(websocket)
    session = Session(state, authorized=token is not None and state.check_token(token))
    state.sessions.add(session)
    writer = asyncio.create_task(_write(websocket, session), name=f"writer-{session.id}")
    close_code = 1000
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("bytes")
            if frame is None:
                frame = message.get("text") or ""
            fatal = await session.receive(frame)
            if fatal is not None:
                close_code = fatal.close_code
                break
    except WebSocketDisconnect:
        pass
    finally:
        state.sessions.discard(session)
        await session.close()
        # Let the writer flush what is queued (a fatal error's message) before closing.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=2)
        writer.cancel()
        with contextlib.suppress(Exception):
            await websocket.close(code=close_code)


async def _write(websocket: WebSocket, session: Session) -> None:
    try:
        while (message := await session.outbox.get()) is not None:
            frame = session.encode(message)
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
    except Exception:  # the socket went away; the reader sees the disconnect
        log.debug("writer for %s stopped", session.id, exc_info=True)

