"""What the client raises: one small hierarchy, rooted at ``MineStreamError``.

    MineStreamError
    ├── ConnectError          the server could not be reached, or the connection broke (also an OSError)
    │   └── TLSError          the TLS handshake failed
    │       └── CertificateError   the server's certificate did not verify (also ssl.SSLCertVerificationError)
    ├── Timeout               a wait ran past its limit; ``stage`` says which (also a TimeoutError)
    └── ServerError           the server answered with an error; ``code`` is protocol v1's code
        ├── Unauthorized      unauthorized (close 1008, HTTP 401)
        ├── BadRequest        bad_message, unknown_type, not_ready, duplicate_id, unknown_id
        ├── LimitExceeded     limit, too_large
        ├── VoiceNotFound     voice_not_found
        ├── UnsupportedAudio  unsupported_audio
        ├── Unavailable       unavailable
        └── Disconnected      the connection closed before the answer came (code "closed")

The OSError and TimeoutError bases let code written against the sockets and
asyncio keep catching what it caught before. A code this client does not know
(a newer server's) is a plain ``ServerError`` with that code.
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar

from .messages import RawFields


class MineStreamError(Exception):
    """Everything the client raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConnectError(MineStreamError, OSError):
    """The server could not be reached (refused, unknown host, handshake cut short)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class TLSError(ConnectError):
    """The TLS handshake failed for a reason other than the certificate's trust."""


class CertificateError(TLSError, ssl.SSLCertVerificationError):
    """The server's certificate did not verify against the trusted CAs."""

    def __init__(self, url: str, reason: str) -> None:
        MineStreamError.__init__(self, f"the certificate of {url} did not verify: {reason}")
        self.url = url
        self.reason = reason


class Timeout(MineStreamError, TimeoutError):
    """A wait ran past its limit.

    ``stage`` is ``connect``, ``ready``, ``first_audio``, ``idle``, ``flush``, ``upload``,
    ``request`` (a ping, a send, an HTTP call) or ``overall``.
    """

    def __init__(self, stage: str, seconds: float, waiting_for: str) -> None:
        super().__init__(f"timed out after {seconds:g} s waiting for {waiting_for}")
        self.stage = stage
        self.seconds = seconds


class ServerError(MineStreamError, RawFields):
    """An ``error`` from the server (or an HTTP error body); item access reads its raw fields."""

    codes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, code: str, message: str, *, fatal: bool = False, id: str | None = None, ref: str | None = None,
                 status: int | None = None, raw: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.id = id
        self.ref = ref
        self.status = status
        """The HTTP status, for an error from the HTTP API."""
        self.raw = raw if raw is not None else {"type": "error", "code": code, "message": message, "fatal": fatal}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @staticmethod
    def from_message(message: dict[str, Any], status: int | None = None) -> ServerError:
        """The exception for a protocol ``error`` message, of the subclass its code names."""
        code = str(message.get("code") or "internal")
        cls = _BY_CODE.get(code, ServerError)
        return cls(
            code,
            str(message.get("message") or code),
            fatal=bool(message.get("fatal")),
            id=message.get("id") if isinstance(message.get("id"), str) else None,
            ref=message.get("ref") if isinstance(message.get("ref"), str) else None,
            status=status,
            raw=message,
        )


class Unauthorized(ServerError):
    codes = ("unauthorized",)


class BadRequest(ServerError):
    codes = ("bad_message", "unknown_type", "not_ready", "duplicate_id", "unknown_id")


class LimitExceeded(ServerError):
    codes = ("limit", "too_large")


class VoiceNotFound(ServerError):
    codes = ("voice_not_found",)


class UnsupportedAudio(ServerError):
    codes = ("unsupported_audio",)


class Unavailable(ServerError):
    codes = ("unavailable",)


class Disconnected(ServerError):
    """The connection closed while an answer was due; ``close_code`` is the WebSocket's."""

    codes = ("closed",)

    @property
    def close_code(self) -> int | None:
        value = self.raw.get("close_code")
        return value if isinstance(value, int) else None


_BY_CODE = {code: cls for cls in ServerError.__subclasses__() for code in cls.codes}


def disconnected(close_code: int | None, reason: str = "") -> dict[str, Any]:
    """The ``error`` message the client makes up for waiters when the socket closes."""
    detail = f" (close {close_code}{': ' + reason if reason else ''})" if close_code else ""
    return {"type": "error", "code": "closed", "message": f"the connection closed{detail}", "fatal": True, "close_code": close_code}
