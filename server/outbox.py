"""The async side of a connection's send queue.

``ServerConnection`` keeps the frames to send and knows nothing of the event
loop. ``Outbox`` is what coroutines wait on: the transport's writer for the
next frame, audio producers for room (a slow client slows its own
utterances only). Control messages never wait; the connection bounds them.
"""

from __future__ import annotations

import asyncio

from .errors import Overloaded
from .protocol import Frame, ServerConnection


class Outbox:
    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        connection.on_change = self.changed
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closed = False

    def changed(self) -> None:
        """Called after every change to the connection's queue."""
        if self.connection.queued_bytes:
            self._empty.clear()
        else:
            self._empty.set()
        if self.connection.queued_bytes or self.connection.failure is not None or self._closed:
            self._readable.set()
        if self.connection.audio_room or self._closed or self.connection.failure is not None:
            self._room.set()
        else:
            self._room.clear()

    async def sent(self) -> None:
        """Wait until everything queued so far has been handed to the transport."""
        await self._empty.wait()

    async def room(self) -> None:
        """Wait until audio may be queued (or the outbox is closed)."""
        await self._room.wait()

    async def next_frame(self) -> Frame | None:
        """The next frame to write; None once closed and drained. Raises ``Overloaded``."""
        while True:
            if self.connection.failure is not None:
                raise self.connection.failure
            frame = self.connection.next_frame()
            self.changed()
            if frame is not None:
                return frame
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()

    def close(self) -> None:
        """No more messages will come: the writer drains what is queued, then stops."""
        self._closed = True
        self.changed()

    @property
    def overloaded(self) -> Overloaded | None:
        return self.connection.failure
