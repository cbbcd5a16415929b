"""A reference recording sent over the socket, in pieces, to clone a voice.

    async with client.begin_upload(name="Me", mime="audio/webm") as upload:
        for piece in recorder:            # send pieces as they are made
            await upload.send(piece)
        voice = await upload.end()        # the saved Voice

The server decodes each piece as it arrives and reports ``progress``; after
``voice_end`` it trims and checks the recording and answers ``voice`` (or an
``error`` for this ``ref``, raised here). The client's reader puts every
message with this ``ref`` (as received, with ``_received``) on the upload's
queue in ``Client._uploads``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ServerError
from .messages import Progress, Voice
from .timeouts import within

if TYPE_CHECKING:
    from .connection import Client

ProgressCallback = Callable[[Progress], None]


class Upload:
    def __init__(self, client: Client, ref: str, begin: dict[str, Any], on_progress: ProgressCallback | None = None) -> None:
        self.ref = ref
        self.progress: list[Progress] = []
        self._client = client
        self._begin = begin
        self._on_progress = on_progress
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Upload:
        self._client._uploads[self.ref] = self._queue
        try:
            await self._client.send(self._begin)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop routing this ref here (an upload never ended is abandoned when the socket closes)."""
        if self._client._uploads.get(self.ref) is self._queue:
            del self._client._uploads[self.ref]

    async def send(self, piece: bytes) -> None:
        self._take_waiting()
        await self._client.send({"type": "voice_chunk", "ref": self.ref, "data": piece})

    async def end(self) -> Voice:
        """Send ``voice_end`` and wait (``Timeouts.upload``) for the saved voice."""
        await self._client.send({"type": "voice_end", "ref": self.ref})
        seconds = self._client.timeouts.upload
        return await within(seconds, self._answer(), "upload", f"the server to check the recording (upload {self.ref!r})")

    async def _answer(self) -> Voice:
        while True:
            message = await self._queue.get()
            voice = self._handle(message)
            if voice is not None:
                return voice

    def _take_waiting(self) -> None:
        """Handle what has arrived so far: progress, or an error that ends the upload early."""
        while not self._queue.empty():
            if self._handle(self._queue.get_nowait()) is not None:
                return

    def _handle(self, message: dict[str, Any]) -> Voice | None:
        kind = message.get("type")
        if kind == "voice":
            return Voice.parse(message)
        if kind == "error":
            raise ServerError.from_message(message)
        if kind == "progress":
            progress = Progress.parse(message)
            self.progress.append(progress)
            if self._on_progress is not None:
                self._on_progress(progress)
        return None  # another type: a later addition to v1
