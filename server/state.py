"""What the app's lifespan builds once and every transport shares."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import Settings
from .engines.base import Engine
from .outbox import Outbox
from .session import Session
from .sinks import AudioSink, MessageSink
from .uploads import Recorder
from .voices import VoiceLibrary


@dataclass
class ServerState:
    settings: Settings
    engine: Engine
    library: VoiceLibrary
    token: str | None
    """The token clients must give; None when none is required."""
    sessions: set[Session] = field(default_factory=set)

    def check_token(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def new_session(
        self, *, authorized: bool, sink: Callable[[Outbox], AudioSink] = MessageSink, recorders: Mapping[str, Recorder] | None = None
    ) -> Session:
        """A session with this server's engine, library and limits; ``authorized``: the transport checked the token."""
        return Session(
            engine=self.engine,
            library=self.library,
            limits=self.settings.limits,
            check_token=None if authorized or self.token is None else self.check_token,
            sink=sink,
            recorders=recorders,
        )
