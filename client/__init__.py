"""An async client for MineStream's protocol v1.

    async with await Client.connect("wss://localhost:8443/v1/stream", ca="certs/ca.pem") as client:
        speech = await client.speak("Hello there.", design="a warm narrator")
        async for chunk in speech:
            play(chunk.data)
        print(speech.done["ttfa_ms"])

One reader task routes the server's messages to the utterance (``id``) or the
upload (``ref``) they belong to, so many utterances can stream at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["AudioChunk", "Client", "ServerError", "Speech", "ssl_context"]


class ServerError(Exception):
    """An ``error`` message from the server."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.code: str = message.get("code", "internal")
        self.fatal: bool = bool(message.get("fatal"))
        self.message = message


@dataclass(frozen=True)
class AudioChunk:
    seq: int
    data: bytes
    received: float
    """``time.perf_counter()`` when the message arrived."""


def ssl_context(ca: str | Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Speech:
    """One utterance: iterate it for audio chunks; ``done`` holds the server's ``done``."""

    def __init__(self, client: Client, utterance_id: str, sent: float) -> None:
        self.id = utterance_id
        self.sent = sent
        self.first_audio: float | None = None
        self.chunks: list[AudioChunk] = []
        self.done: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self._client = client
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @property
    def ttfa_ms(self) -> float | None:
        """Client-side time to first audio: speak sent to first audio received."""
        return None if self.first_audio is None else (self.first_audio - self.sent) * 1000

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        while self.done is None:
            message = await self._queue.get()
            kind = message["type"]
            if kind == "audio":
                chunk = AudioChunk(message["seq"], message["data"], message["_received"])
                if self.first_audio is None:
                    self.first_audio = chunk.received
                self.chunks.append(chunk)
                yield chunk
            elif kind == "done":
                self.done = message
            elif kind == "error":
                self.errors.append(message)
                if message.get("fatal"):
                    raise ServerError(message)
        if self.errors and self.done.get("cancelled"):
            # The server ended (or refused) the utterance because of this error.
            raise ServerError(self.errors[0])

    async def collect(self) -> Speech:
        async for _ in self:
            pass
        return self

    async def send(self, text: str) -> None:
        """Append text to an utterance opened with ``final=False``."""
        await self._client.send({"type": "text", "id": self.id, "text": text})

    async def end(self) -> None:
        await self._client.send({"type": "end", "id": self.id})

    async def cancel(self) -> None:
        await self._client.send({"type": "cancel", "id": self.id})

    def pcm(self) -> np.ndarray:
        """All audio received, as float32 at the session's sample rate."""
        data = b"".join(chunk.data for chunk in self.chunks)
        if self._client.format == "pcm_f32le":
            return np.frombuffer(data, dtype="<f4").astype(np.float32)
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class Client:
    def __init__(self, ws: ClientConnection, *, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.ready: dict[str, Any] = {}
        self.format = "pcm_s16le"
        self.sample_rate = 24000
        self.errors: list[dict[str, Any]] = []
        """Errors not tied to an open utterance or upload, in arrival order."""
        self.stray: list[dict[str, Any]] = []
        """Messages for an utterance that is no longer open (none should come)."""
        self.closed = False
        self._utterances: dict[str, Speech] = {}
        self._uploads: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._pongs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._ids = itertools.count()
        self._reader = asyncio.create_task(self._read(), name="minestream-client-reader")

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        ssl: ssl.SSLContext | None = None,
        ca: str | Path | None = None,
        format: str = "pcm_s16le",
        sample_rate: int = 24000,
        encoding: str = "msgpack",
        origin: str | None = None,
    ) -> Client:
        context = ssl if ssl is not None else ssl_context(ca) if url.startswith("wss:") else None
        headers = {"Origin": origin} if origin else None
        ws = await connect(url, ssl=context, max_size=None, additional_headers=headers, compression=None)
        client = cls(ws, binary=encoding == "msgpack")
        hello: dict[str, Any] = {"type": "hello", "protocol": 1, "format": format, "sample_rate": sample_rate}
        if token is not None:
            hello["token"] = token
        try:
            with contextlib.suppress(ConnectionClosed):  # the reason arrives through the reader
                await client.send(hello)
            client.ready = await client._ready
        except BaseException:
            await client.close()
            raise
        client.format, client.sample_rate = client.ready["format"], client.ready["sample_rate"]
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def wait_closed(self) -> None:
        """Until the server has closed the connection (``ws.close_code`` says how)."""
        await asyncio.shield(self._reader)

    # --- sending -----------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send(msgpack.packb(message, use_bin_type=True))
        else:
            await self.ws.send(json.dumps(_to_json(message)))

    async def send_raw(self, frame: bytes | str) -> None:
        """A frame exactly as given (tests of malformed input use this)."""
        await self.ws.send(frame)

    async def speak(
        self,
        text: str,
        *,
        design: str | None = None,
        voice_id: str | None = None,
        language: str = "auto",
        final: bool = True,
        id: str | None = None,
    ) -> Speech:
        """Open an utterance; iterate the returned ``Speech`` for its audio."""
        utterance_id = id or f"u{next(self._ids)}"
        voice = {"design": design} if design is not None else {"voice_id": voice_id}
        speech = Speech(self, utterance_id, time.perf_counter())
        self._utterances[utterance_id] = speech
        await self.send({"type": "speak", "id": utterance_id, "text": text, "voice": voice, "language": language, "final": final})
        return speech

    async def say(self, text: str, **voice: Any) -> Speech:
        """Speak and wait for the whole utterance."""
        return await (await self.speak(text, **voice)).collect()

    async def upload_voice(
        self,
        data: bytes,
        *,
        name: str | None = None,
        ref_text: str | None = None,
        mime: str | None = None,
        chunk_bytes: int = 16384,
        ref: str | None = None,
    ) -> dict[str, Any]:
        """Upload a recording in pieces; returns the server's ``voice`` message."""
        ref = ref or f"r{next(self._ids)}"
        queue = self._uploads[ref] = asyncio.Queue()
        begin: dict[str, Any] = {"type": "voice_begin", "ref": ref}
        for key, value in (("name", name), ("ref_text", ref_text), ("mime", mime)):
            if value is not None:
                begin[key] = value
        try:
            await self.send(begin)
            for start in range(0, len(data), chunk_bytes):
                await self.send({"type": "voice_chunk", "ref": ref, "data": data[start : start + chunk_bytes]})
            await self.send({"type": "voice_end", "ref": ref})
            while True:
                message = await queue.get()
                if message["type"] == "voice":
                    return message
                if message["type"] == "error":
                    raise ServerError(message)
        finally:
            self._uploads.pop(ref, None)

    async def ping(self, t: Any = None) -> dict[str, Any]:
        await self.send({"type": "ping", "t": t})
        return await self._pongs.get()

    # --- receiving ---------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                received = time.perf_counter()
                message = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
                if message.get("type") == "audio" and isinstance(message.get("data"), str):
                    message["data"] = base64.b64decode(message["data"])
                message["_received"] = received
                self._route(message)
        except ConnectionClosed:
            pass  # close_code says how; waiting utterances get the error below
        finally:
            self.closed = True
            fatal = {"type": "error", "code": "closed", "message": "the connection closed", "fatal": True}
            if not self._ready.done():
                self._ready.set_exception(ServerError(self.errors[-1] if self.errors else fatal))
            for speech in self._utterances.values():
                speech._queue.put_nowait(fatal)
            for queue in self._uploads.values():
                queue.put_nowait(fatal)

    def _route(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready" and not self._ready.done():
            self._ready.set_result(message)
        elif kind == "pong":
            self._pongs.put_nowait(message)
        elif message.get("id") in self._utterances:
            speech = self._utterances[message["id"]]
            if kind == "done":
                self._utterances.pop(message["id"], None)
            speech._queue.put_nowait(message)
        elif message.get("ref") in self._uploads:
            self._uploads[message["ref"]].put_nowait(message)
        elif kind in ("audio", "done"):
            self.stray.append(message)
        elif kind == "error":
            self.errors.append(message)
            if message.get("fatal") and not self._ready.done():
                self._ready.set_exception(ServerError(message))


def _to_json(message: dict[str, Any]) -> dict[str, Any]:
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in message.items()}
