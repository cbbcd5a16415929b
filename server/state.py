"""What the app's lifespan builds once and every transport shares."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import Settings
from .engines.base import Engine
from .errors import TooManySessions, Unavailable
from .outbox import Outbox
from .session import Session
from .sinks import AudioSink, MessageSink
from .speech import AudioBudget
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
    """Sessions that said hello: they count towards ``max_sessions``."""
    pending: set[Session] = field(default_factory=set)
    """Connections that have not said hello yet: they count towards ``max_pending``."""
    draining: bool = False
    """Shutting down: no new sessions or utterances; those in flight finish."""

    @property
    def audio_budget(self) -> AudioBudget:
        limits = self.settings.limits
        return AudioBudget(per_char_s=limits.max_audio_s_per_char, utterance_s=limits.max_utterance_audio_s)

    def check_token(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def new_session(
        self, *, authorized: bool, sink: Callable[[Outbox], AudioSink] = MessageSink, recorders: Mapping[str, Recorder] | None = None
    ) -> Session:
        """A session with this server's engine, library and limits; raises when there is no room.

        ``authorized``: the transport already checked the token (``?token=``, a
        Bearer header, a WebRTC offer), or none is needed; such a session
        counts towards ``max_sessions`` at once. Any other waits for its
        ``hello`` in the small ``max_pending`` budget, so sockets that never
        authenticate cannot take the places of clients that do.
        """
        limits = self.settings.limits
        if self.draining:
            raise Unavailable("the server is shutting down; try again shortly")
        authorized = authorized or self.token is None
        if not authorized and len(self.pending) >= limits.max_pending:
            raise TooManySessions(f"{limits.max_pending} connections are already waiting to authenticate")
        session = Session(
            engine=self.engine,
            library=self.library,
            limits=limits,
            check_token=None if authorized else self.check_token,
            sink=sink,
            recorders=recorders,
            admit=self._admit,
        )
        if authorized:
            self._admit(session)
        else:
            self.pending.add(session)
        return session

    def _admit(self, session: Session) -> None:
        if session in self.sessions:
            return
        if len(self.sessions) >= self.settings.limits.max_sessions:
            raise TooManySessions(f"the server is at its limit of {self.settings.limits.max_sessions} sessions")
        self.pending.discard(session)
        self.sessions.add(session)

    def forget(self, session: Session) -> None:
        """The session has ended."""
        self.pending.discard(session)
        self.sessions.discard(session)
