"""A session with a MineStream server over protocol v1: connect, speak, upload, close.

``Client.connect`` opens the WebSocket, sends ``hello`` and waits for
``ready``; any error before ``ready`` (a bad token, a refused ``hello``, a
full server) fails the connect with that error. One reader task routes each
message the server sends: by type for the session's own (``ready``,
``pong``), then by ``id`` to its utterance (``Speech``) or by ``ref`` to its
upload. An error for nothing open is kept in ``errors``; audio or ``done``
for an utterance no longer open in ``stray``; anything else (a message type
a newer server sends) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mimetypes
import ssl as ssl_module
import time
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from . import wire
from .errors import Disconnected, ServerError, disconnected
from .handshake import open_socket
from .library import VoiceLibrary, http_base, url_token
from .messages import Pong, Ready, Voice
from .speech import Speech
from .timeouts import Timeouts, within
from .tls import ssl_context
from .upload import ProgressCallback, Upload


class Client:
    """One session. Use ``Client.connect(...)``; it is both awaitable and an async context manager."""

    def __init__(self, ws: ClientConnection, *, binary: bool, url: str, token: str | None,
                 ssl: ssl_module.SSLContext | None, timeouts: Timeouts) -> None:
        self.ws = ws
        self.binary = binary
        self.url = url
        self.timeouts = timeouts
        self.ready: Ready = Ready.parse({})
        self.format = "pcm_s16le"
        self.sample_rate = 24000
        self.errors: list[ServerError] = []
        """Errors not tied to an open utterance or upload, in arrival order."""
        self.stray: list[dict[str, Any]] = []
        """Messages for an utterance that is no longer open (one cancelled after a timeout, say)."""
        self.closed = False
        self._token = token
        self._ssl = ssl
        self._voices: VoiceLibrary | None = None
        self._utterances: dict[str, Speech] = {}
        self._uploads: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._pongs: asyncio.Queue[Pong] = asyncio.Queue()
        self._ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._by_type: dict[str, Callable[[dict[str, Any]], None]] = {"ready": self._on_ready, "pong": self._on_pong}
        self._reader = asyncio.create_task(self._read(), name="minestream-client-reader")

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ca: str | Path | None = None,
        insecure: bool = False,
        format: str = "pcm_s16le",
        sample_rate: int = 24000,
        encoding: str = "msgpack",
        origin: str | None = None,
        timeouts: Timeouts | None = None,
        segments: bool = False,
    ) -> Connecting:
        """Open a session: ``async with Client.connect(url) as client:`` or ``client = await Client.connect(url)``.

        ``ssl`` is the TLS context to use; without it, ``ca`` (a PEM file) is
        trusted on top of the system's CAs, and ``insecure`` skips verification.
        ``encoding`` is ``msgpack`` (binary frames) or ``json`` (text frames).
        ``segments`` asks the server for a ``segment`` before each piece's
        audio (``Speech.events()``, ``Speech.segments``): which text it speaks
        and where its audio starts.
        """
        context = ssl if ssl is not None else ssl_context(ca, insecure=insecure) if url.startswith("wss:") else None
        hello: dict[str, Any] = {"type": "hello", "protocol": 1, "format": format, "sample_rate": sample_rate}
        if segments:
            hello["segments"] = True
        if token is not None:
            hello["token"] = token
        headers = {"Origin": origin} if origin else {}
        if token is not None:
            # At the upgrade too: an authenticated socket never waits in the server's small budget
            # for connections that have not said who they are.
            headers["Authorization"] = f"Bearer {token}"
        return Connecting(cls._open(url, context, hello, headers, encoding == "msgpack", timeouts or Timeouts()))

    @classmethod
    async def _open(cls, url: str, context: ssl_module.SSLContext | None, hello: dict[str, Any],
                    headers: dict[str, str] | None, binary: bool, timeouts: Timeouts) -> Client:
        ws = await open_socket(url, context, headers, timeouts.connect)
        client = cls(ws, binary=binary, url=url, token=hello.get("token"), ssl=context, timeouts=timeouts)
        try:
            with contextlib.suppress(Disconnected):  # the reason arrives through the reader
                await client.send(hello)
            client.ready = await within(timeouts.ready, asyncio.shield(client._ready), "ready", "the server's ready (hello sent)")
        except BaseException:
            await client.close()
            raise
        client.format, client.sample_rate = client.ready.format, client.ready.sample_rate
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        if not self._ready.done():
            self._ready.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), self.timeouts.request)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._voices is not None:
            await self._voices.close()

    async def wait_closed(self) -> None:
        """Until the server has closed the connection (``ws.close_code`` says how)."""
        await asyncio.shield(self._reader)

    @property
    def open_utterances(self) -> int:
        """Utterances spoken on this session whose ``done`` has not come yet."""
        return len(self._utterances)

    @property
    def voices(self) -> VoiceLibrary:
        """The server's voice library (``/v1/voices`` over HTTPS, same token and trust)."""
        if self._voices is None:
            token = self._token or url_token(self.url)
            self._voices = VoiceLibrary(http_base(self.url), token=token, ssl=self._ssl, timeout=self.timeouts.request)
        return self._voices

    # --- sending -----------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(wire.encode(message, binary=self.binary))

    async def send_raw(self, frame: bytes | str) -> None:
        """A frame exactly as given (tests of malformed input use this)."""
        try:
            # Only a server that stopped reading makes this wait.
            await within(self.timeouts.request, self.ws.send(frame), "request", "the server to take a frame")
        except ConnectionClosed:
            raise ServerError.from_message(disconnected(self.ws.close_code, self.ws.close_reason or "")) from None

    def send_soon(self, message: dict[str, Any]) -> None:
        """Send without waiting for it; failures are dropped."""
        self.run_soon(self.send(message))

    def run_soon(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background (a best-effort ``cancel``); failures are dropped."""

        async def run() -> None:
            with contextlib.suppress(Exception):
                await work

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        """Open an utterance; iterate the returned ``Speech`` for its audio.

        The voice is a ``design`` (a description) or a saved ``voice_id``.
        ``final=False`` opens it for text sent later with ``Speech.send`` and
        closed by ``Speech.end``.
        """
        utterance_id = id or f"u{next(self._ids)}"
        voice = {"design": design} if design is not None else {"voice_id": voice_id}
        speech = Speech(self, utterance_id, time.perf_counter(), final=final)
        self._utterances[utterance_id] = speech
        try:
            await self.send({"type": "speak", "id": utterance_id, "text": text, "voice": voice, "language": language, "final": final})
        except BaseException:
            self._utterances.pop(utterance_id, None)
            raise
        return speech

    async def say(self, text: str, *, timeout: float | None = None, **voice: Any) -> Speech:
        """Speak and receive the whole utterance (``timeout``: at most this long overall)."""
        return await (await self.speak(text, **voice)).collect(timeout)

    def begin_upload(self, *, name: str | None = None, ref_text: str | None = None, mime: str | None = None,
                     ref: str | None = None, on_progress: ProgressCallback | None = None) -> Upload:
        """An upload to send in pieces as they are made (``async with``; see ``client.upload``)."""
        ref = ref or f"r{next(self._ids)}"
        begin: dict[str, Any] = {"type": "voice_begin", "ref": ref}
        for key, value in (("name", name), ("ref_text", ref_text), ("mime", mime)):
            if value is not None:
                begin[key] = value
        return Upload(self, ref, begin, on_progress)

    async def upload_voice(self, data: bytes, *, name: str | None = None, ref_text: str | None = None, mime: str | None = None,
                           chunk_bytes: int = 16384, ref: str | None = None, on_progress: ProgressCallback | None = None) -> Voice:
        """Clone a voice from a whole recording: sent in pieces of ``chunk_bytes``; the saved ``Voice``."""
        async with self.begin_upload(name=name, ref_text=ref_text, mime=mime, ref=ref, on_progress=on_progress) as upload:
            for start in range(0, len(data), chunk_bytes):
                await upload.send(data[start : start + chunk_bytes])
            return await upload.end()

    async def clone(self, recording: str | Path, *, name: str | None = None, ref_text: str | None = None,
                    on_progress: ProgressCallback | None = None) -> Voice:
        """Clone a voice from a recording file (WAV, FLAC, MP3, Ogg/WebM Opus, MP4/AAC); named after the file by default."""
        path = Path(recording)
        data = await asyncio.to_thread(path.read_bytes)
        mime = mimetypes.guess_type(path.name)[0]
        return await self.upload_voice(data, name=name or path.stem, ref_text=ref_text, mime=mime, on_progress=on_progress)

    async def ping(self, t: Any = None) -> Pong:
        await self.send({"type": "ping", "t": t})
        return await within(self.timeouts.request, self._pongs.get(), "request", "pong")

    # --- receiving ---------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                received = time.perf_counter()
                message = wire.decode(frame)
                if message is not None:
                    message["_received"] = received
                    self._route(message)
        except ConnectionClosed:
            pass  # close_code says how; waiting utterances get the error below
        finally:
            self.closed = True
            self._fail_waiters()

    def _fail_waiters(self) -> None:
        closed = disconnected(self.ws.close_code, self.ws.close_reason or "")
        if not self._ready.done():
            self._ready.set_exception(self.errors[-1] if self.errors else ServerError.from_message(closed))
        for speech in self._utterances.values():
            speech.deliver(closed)
        for queue in self._uploads.values():
            queue.put_nowait(closed)

    def _route(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        handler = self._by_type.get(str(kind))
        target_id, target_ref = message.get("id"), message.get("ref")
        if handler is not None:
            handler(message)
        elif isinstance(target_id, str) and target_id in self._utterances:
            if kind == "done":
                self._utterances.pop(target_id).deliver(message)
            else:
                self._utterances[target_id].deliver(message)
        elif isinstance(target_ref, str) and target_ref in self._uploads:
            self._uploads[target_ref].put_nowait(message)
        elif kind in ("audio", "done"):
            self.stray.append(message)
        elif kind == "error":
            self._on_error(message)

    def _on_ready(self, message: dict[str, Any]) -> None:
        if not self._ready.done():
            self._ready.set_result(Ready.parse(message))

    def _on_pong(self, message: dict[str, Any]) -> None:
        self._pongs.put_nowait(Pong(message.get("t"), raw=message))

    def _on_error(self, message: dict[str, Any]) -> None:
        error = ServerError.from_message(message)
        self.errors.append(error)
        if not self._ready.done():
            # Before ready, the only thing the server can refuse is hello: connecting failed.
            self._ready.set_exception(error)


class Connecting:
    """What ``Client.connect`` returns: ``await`` it for the ``Client``, or ``async with`` it."""

    def __init__(self, opening: Coroutine[Any, Any, Client]) -> None:
        self._opening = opening
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._opening.__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._opening
        return self._client

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.close()
