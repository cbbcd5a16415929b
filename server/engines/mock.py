"""A scripted engine, for tests: what httpx's ``MockTransport`` is to a transport.

``MockEngine(handler)`` answers each request with what ``handler(request)``
returns: an iterable or an async iterable of float32 chunks at 24 kHz (an
async generator can wait on an event, to hold a stream open), or it raises.
The default handler speaks a tone whose length follows the text, so
sessions, the protocol and the HTTP routes can be tested in-process in
microseconds per case, without a model. Every request is kept in
``requests``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Union

import numpy as np

from ..audio import SAMPLE_RATE
from .base import Engine, EngineInfo, SynthesisRequest

Chunks = Union[Iterable[np.ndarray], AsyncIterable[np.ndarray]]
Handler = Callable[[SynthesisRequest], Chunks]

MS_PER_CHAR = 20
CHUNK_MS = 100


def tone(request: SynthesisRequest) -> list[np.ndarray]:
    """A 220 Hz tone, ``MS_PER_CHAR`` per character, in chunks of ``CHUNK_MS``."""
    samples = len(request.text) * MS_PER_CHAR * SAMPLE_RATE // 1000
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
    step = CHUNK_MS * SAMPLE_RATE // 1000
    return [audio[i : i + step] for i in range(0, samples, step)]


class MockEngine(Engine):
    def __init__(self, handler: Handler = tone, *, languages: list[str] | None = None, design: bool = True, clone: bool = True, **info: Any) -> None:
        self.handler = handler
        self.requests: list[SynthesisRequest] = []
        self.state = "created"
        self.info = EngineInfo(
            name="mock",
            kind="mock",
            models=["mock"],
            languages=languages or ["en", "de"],
            design=design,
            clone=clone,
            note="a scripted engine for tests",
            **info,
        )

    async def start(self) -> None:
        self.state = "ready"

    async def close(self) -> None:
        self.state = "closed"

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        self.requests.append(request)
        chunks = self.handler(request)
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                yield chunk
        else:
            for chunk in chunks:
                yield chunk

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "requests": len(self.requests)}
