"""The WebSocket transport: frames from the socket to the session and back.

Besides moving frames it runs the session's clocks (``Session.timeout``: a
``hello`` in time, an idle session closed) and closes a client that takes
longer than ``send_timeout_s`` to accept a frame: it is not reading.
uvicorn's WebSocket pings (see ``server.runner``) find peers that vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import connection_token, origin_allowed
from .config import Limits
from .errors import MineStreamError, Overloaded
from .protocol import Error, Frame, encode_frame
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
    token = connection_token(websocket)
    try:
        session = state.new_session(authorized=token is not None and state.check_token(token))
    except MineStreamError as refusal:
        await websocket.send_text(str(encode_frame(Error.of(refusal), binary=False)))
        await websocket.close(code=refusal.close_code if refusal.fatal else 1012)  # 1012: restarting, retry
        return
    reader = asyncio.create_task(_read(websocket, session), name=f"reader-{session.id}")
    writer = asyncio.create_task(_write(websocket, session, state.settings.limits), name=f"writer-{session.id}")
    close_code = 1000
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():  # the writer gave up on a client that does not read
            reader.cancel()
            close_code = Overloaded.close_code
        else:
            close_code = reader.result()
    finally:
        reader.cancel()
        state.forget(session)
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=FLUSH_TIMEOUT_S)
        writer.cancel()
        # Closing waits for the socket to take the close frame; a client that does not read never
        # does, and returning from here is what makes uvicorn drop the connection.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code=close_code), FLUSH_TIMEOUT_S)


async def _read(websocket: WebSocket, session: Session) -> int:
    """Frames to the session until the client leaves, a clock runs out or a fatal error; returns the close code."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), session.timeout())
            except asyncio.TimeoutError:
                expired = session.expired()
                if expired is None:
                    continue
                session.connection.send_error(expired)
                return expired.close_code
            if message["type"] == "websocket.disconnect":
                break
            fatal = await session.receive(_frame(message))
            if fatal is not None:
                return fatal.close_code
    return 1000


def _frame(message: MutableMapping[str, Any]) -> Frame:
    data = message.get("bytes")
    if isinstance(data, bytes):
        return data
    text = message.get("text")
    return text if isinstance(text, str) else ""


async def _write(websocket: WebSocket, session: Session, limits: Limits) -> None:
    try:
        while (frame := await session.outbox.next_frame()) is not None:
            send = websocket.send_bytes(frame) if isinstance(frame, bytes) else websocket.send_text(frame)
            try:
                await asyncio.wait_for(send, limits.send_timeout_s)
            except asyncio.TimeoutError:
                raise Overloaded(f"the client did not read for {limits.send_timeout_s:g} s") from None
    except Overloaded as exc:
        log.info("closing %s: %s", session.id, exc.message)
    except Exception:  # the socket went away; the reader sees the disconnect
        log.debug("writer for %s stopped", session.id, exc_info=True)
