"""A blocking client for scripts and notebooks.

    from client.sync import SyncClient

    with SyncClient("wss://localhost:8443/v1/stream", ca="certs/ca.pem") as tts:
        speech = tts.say("Hello there.", design="a warm narrator")
        Path("hello.wav").write_bytes(speech.wav())
        me = tts.clone("me.wav", ref_text="what I said")
        print([v.name for v in tts.voices()])

The async ``Client`` runs on an event loop in a thread of its own, so this
works where a loop is already running (Jupyter) as well as in plain scripts.
Each call blocks until the async call it wraps returns, and raises what it
raises (``client.errors``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .connection import Client
from .messages import Ready, Voice
from .speech import Speech

T = TypeVar("T")


class SyncClient:
    """``Client.connect(url, **options)``, blocking. Close it (or use ``with``)."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="minestream-sync-client", daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._run(_connect(url, options))
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def ready(self) -> Ready:
        return self._client.ready

    @property
    def sample_rate(self) -> int:
        return self._client.sample_rate

    def say(self, text: str, *, design: str | None = None, voice_id: str | None = None, language: str = "auto",
            timeout: float | None = None) -> Speech:
        """The whole utterance: ``.pcm()``, ``.wav()``, ``.done``."""
        return self._run(self._client.say(text, design=design, voice_id=voice_id, language=language, timeout=timeout))

    def clone(self, recording: str | Path, *, name: str | None = None, ref_text: str | None = None) -> Voice:
        return self._run(self._client.clone(recording, name=name, ref_text=ref_text))

    def voices(self) -> list[Voice]:
        return self._run(self._client.voices.list())

    def voice(self, name_or_id: str) -> Voice:
        return self._run(self._client.voices.find(name_or_id))

    def rename(self, voice_id: str, name: str) -> Voice:
        return self._run(self._client.voices.rename(voice_id, name))

    def delete(self, voice_id: str) -> None:
        self._run(self._client.voices.delete(voice_id))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        # The threads asyncio.to_thread started end with the loop, not later.
        self._run(self._loop.shutdown_default_executor())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _connect(url: str, options: dict[str, Any]) -> Client:
    return await Client.connect(url, **options)
