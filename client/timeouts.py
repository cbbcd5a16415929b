"""How long the client waits for the server at each step, so no call can hang.

None means no limit for that step. The defaults suit a server on a LAN or a
GPU machine under load; a queue of long utterances ahead of yours is what
``first_audio`` has to cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from .errors import Timeout

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = 10.0
    """TCP, TLS and the WebSocket upgrade."""
    ready: float | None = 10.0
    """``hello`` to ``ready``."""
    first_audio: float | None = 60.0
    """An utterance's text complete (``speak`` with ``final``, or ``end``) to its first audio or ``done``."""
    idle: float | None = 30.0
    """Between one utterance's messages once its audio has started."""
    upload: float | None = 120.0
    """``voice_end`` to ``voice``: the server decodes, trims and checks the recording."""
    request: float | None = 30.0
    """A ping, a frame the socket cannot take, an HTTP call of the voice library."""


async def within(seconds: float | None, awaitable: Awaitable[T], stage: str, waiting_for: str) -> T:
    """``await awaitable``, raising ``Timeout(stage)`` past ``seconds`` (None: no limit)."""
    if seconds is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except Timeout:
        raise  # an inner step's own limit: it names its stage
    except asyncio.TimeoutError:
        raise Timeout(stage, seconds, waiting_for) from None
