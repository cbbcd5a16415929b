"""What every session shares: settings, the one engine, the voice library, the token."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Settings
from .engines.base import Engine
from .voices import VoiceLibrary

if TYPE_CHECKING:
    from .session import Session


@dataclass
class ServerState:
    settings: Settings
    engine: Engine
    library: VoiceLibrary
    token: str | None
    sessions: set[Session] = field(default_factory=set)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run at shutdown before the engine closes (transports free their peers)."""

    def check_token(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())
