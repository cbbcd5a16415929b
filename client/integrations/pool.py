"""Sessions shared by many utterances: the adapters' way to reach one server.

Frameworks open an utterance per reply (LiveKit's streams, Home Assistant's
requests) and each would otherwise pay for a TLS handshake and ``hello``
before its first audio. A ``SessionPool`` keeps sessions open and speaks each
utterance on one that has room (protocol v1 lets a session hold
``limits.max_open_utterances`` at once); when all are full, or none is open
yet, it opens another. A session the server closed is dropped and replaced
on the next utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ..connection import Client
from ..errors import Disconnected
from ..speech import Speech


class SessionPool:
    """``speak`` on a session with room; ``connect`` opens a new session (``Client.connect(...)``)."""

    def __init__(self, connect: Callable[[], Awaitable[Client]]) -> None:
        self._connect = connect
        self._clients: list[Client] = []
        self._lock = asyncio.Lock()

    @property
    def sessions(self) -> list[Client]:
        """The sessions open now."""
        return [client for client in self._clients if not client.closed]

    async def client(self) -> Client:
        """A session with room for one more utterance (opened if need be)."""
        async with self._lock:
            return await self._with_room()

    async def speak(self, text: str, **options: Any) -> tuple[Client, Speech]:
        """``Client.speak`` on a session with room; a session found closed on the way is replaced once."""
        async with self._lock:
            client = await self._with_room()
            try:
                return client, await client.speak(text, **options)
            except Disconnected:
                self._clients.remove(client)
                client = await self._with_room()
                return client, await client.speak(text, **options)

    async def prewarm(self) -> None:
        """Open the first session now, so the first utterance does not wait for it."""
        await self.client()

    async def aclose(self) -> None:
        async with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def _with_room(self) -> Client:
        self._clients = self.sessions
        for client in self._clients:
            limit = client.ready.limits.max_open_utterances or 1
            if client.open_utterances < limit:
                return client
        client = await self._connect()
        self._clients.append(client)
        return client
