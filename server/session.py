"""One client's session: frames in, each message to the collaborator that owns it.

The session is transport-agnostic. A transport (the WebSocket, or a WebRTC
data channel) hands it frames with ``receive`` and writes the frames its
``outbox`` yields. The protocol's rules live in ``ServerConnection``; what a
message does lives in ``Utterances`` (speak, text, end, cancel) and
``Uploads`` (voice_begin, voice_chunk, voice_end). The session itself only
answers ``hello`` and ``ping`` and turns errors into ``error`` messages.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import metrics
from .config import Limits
from .engines.base import Engine
from .errors import HelloTimeout, IdleTimeout, MineStreamError, Unauthorized
from .outbox import Outbox
from .protocol import (
    Cancel,
    ClientMessage,
    End,
    Flush,
    Frame,
    Hello,
    Ping,
    Pong,
    Ready,
    ServerConnection,
    Speak,
    Text,
    VoiceBegin,
    VoiceChunk,
    VoiceEnd,
)
from .sinks import AudioSink, MessageSink
from .uploads import Recorder, Uploads
from .utterances import Utterances
from .voices import VoiceLibrary

log = logging.getLogger("minestream.session")


class Session:
    def __init__(
        self,
        *,
        engine: Engine,
        library: VoiceLibrary,
        limits: Limits,
        check_token: Callable[[str | None], bool] | None = None,
        sink: Callable[[Outbox], AudioSink] = MessageSink,
        recorders: Mapping[str, Recorder] | None = None,
        admit: Callable[[Session], None] = lambda session: None,
    ) -> None:
        """``check_token`` is None when the transport has already authorised the client;
        ``admit`` is called with an authorised ``hello``, before ``ready`` (it raises when the server is full)."""
        self.id = "s_" + secrets.token_hex(6)
        self.engine = engine
        self.limits = limits
        self._check_token = check_token
        self._admit = admit
        self.connection = ServerConnection(limits.max_message_bytes, limits.queue)
        self.connection.on_error = lambda error: metrics.ERRORS.labels(error.code).inc()
        self.outbox = Outbox(self.connection)
        self.utterances = Utterances(self.connection, engine, library, limits, sink(self.outbox), owner=self.id)
        self.uploads = Uploads(self.connection, engine, library, limits, recorders)
        self._ready = False
        self.opened_at = time.monotonic()
        """When the hello clock started (a transport may restart it once the client can talk)."""

    @property
    def authorized(self) -> bool:
        return self._check_token is None

    @property
    def ready(self) -> bool:
        """``hello`` was accepted: the client is authorised and speaking protocol v1."""
        return self._ready

    def timeout(self) -> float | None:
        """How long the transport may wait for the client's next frame before ``expired`` (None: no limit)."""
        if not self.ready:
            return max(0.0, self.opened_at + self.limits.hello_timeout_s - time.monotonic())
        return None if self.busy else self.limits.idle_timeout_s

    def expired(self) -> MineStreamError | None:
        """The fatal error once a wait of ``timeout()`` has passed with no frame (None: carry on)."""
        if not self.ready:
            return HelloTimeout(f"no valid 'hello' within {self.limits.hello_timeout_s:g} s")
        if self.busy:
            return None  # something opened while the transport waited
        return IdleTimeout(f"nothing was sent for {self.limits.idle_timeout_s:g} s")

    @property
    def busy(self) -> bool:
        """Something is open: an utterance or an upload."""
        return bool(len(self.utterances) or len(self.uploads))

    async def receive(self, frame: Frame) -> MineStreamError | None:
        """Handle one frame; returns the fatal error that must end the transport, if any."""
        message: ClientMessage | None = None
        try:
            message = self.connection.receive(frame)
            await self.handle(message)
        except MineStreamError as exc:
            self._report(exc, message)
            if exc.fatal:
                return exc
        except Exception:
            # A bug must cost this message, not the session.
            log.exception("session %s: unexpected error", self.id)
            self._report(MineStreamError("internal error; the server has logged it"), message)
        return self.connection.failure

    async def handle(self, message: ClientMessage) -> None:
        """Act on one message; a ``MineStreamError`` raised here becomes an ``error`` message."""
        match message:
            case Hello():
                self._hello(message)
            case Speak():
                await self.utterances.speak(message)
            case Text():
                self.utterances.text(message)
            case End():
                self.utterances.end(message)
            case Flush():
                self.utterances.flush(message)
            case Cancel():
                await self.utterances.cancel(message)
            case VoiceBegin():
                await self.uploads.begin(message)
            case VoiceChunk():
                await self.uploads.chunk(message)
            case VoiceEnd():
                await self.uploads.end(message)
            case Ping():
                self.connection.send(Pong(message.t))

    def _report(self, exc: MineStreamError, message: ClientMessage | None) -> None:
        self.connection.send_error(exc, id=getattr(message, "id", None), ref=getattr(message, "ref", None))

    def _hello(self, hello: Hello) -> None:
        if self._check_token is not None:
            if not self._check_token(hello.token):
                raise Unauthorized("a valid token is required: pass it in hello.token, ?token= or a Bearer header")
            self._check_token = None
        self._admit(self)
        self._ready = True
        engine = {**self.engine.info.as_message(), **_engine_state(self.engine.health())}
        self.connection.send(Ready(self.id, engine, hello.format, hello.sample_rate, self.limits.as_message()))

    async def close(self) -> None:
        """The transport is gone: stop every utterance and upload, free everything."""
        await self.utterances.close()
        await self.uploads.close()
        self.outbox.close()


def _engine_state(health: dict[str, Any]) -> dict[str, Any]:
    """What ``ready`` says of the engine's health: its state, and its decode rows where it has them."""
    rows = health.get("rows")
    return {"state": health.get("state", "ready"), **({"rows": rows} if rows else {})}
