"""The error hierarchy. Every error carries a protocol v1 error code.

``MineStreamError`` is the root; each subclass fixes one ``code`` from the
protocol. ``fatal`` errors close the socket (with ``close_code``); all others are
reported to the client as an ``error`` message and the session carries on.
"""

from __future__ import annotations


class MineStreamError(Exception):
    code = "internal"
    fatal = False
    close_code = 1011
    http_status = 500

    def __init__(self, message: str, *, id: str | None = None, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id
        self.ref = ref


class BadMessage(MineStreamError):
    """The frame is not a well-formed protocol message, or a field is invalid."""

    code = "bad_message"
    http_status = 400


class UnknownType(MineStreamError):
    code = "unknown_type"
    http_status = 400


class NotReady(MineStreamError):
    """A message other than ``hello`` came before ``hello``."""

    code = "not_ready"
    http_status = 400


class Unauthorized(MineStreamError):
    code = "unauthorized"
    fatal = True
    close_code = 1008
    http_status = 401


class TooLarge(MineStreamError):
    """A message exceeds ``max_message_bytes``: fatal, since the stream is untrustworthy."""

    code = "too_large"
    fatal = True
    close_code = 1009
    http_status = 413


class LimitExceeded(MineStreamError):
    """A configured limit (text length, open utterances, reference length, sessions)."""

    code = "limit"
    http_status = 429


class DuplicateId(MineStreamError):
    code = "duplicate_id"
    http_status = 409


class UnknownId(MineStreamError):
    code = "unknown_id"
    http_status = 404


class VoiceNotFound(MineStreamError):
    code = "voice_not_found"
    http_status = 404


class UnsupportedAudio(MineStreamError):
    """Audio that cannot be decoded, or that is unfit as a reference (silent, clipped...)."""

    code = "unsupported_audio"
    http_status = 415


class EngineError(MineStreamError):
    code = "engine_error"
    http_status = 500


class Unavailable(MineStreamError):
    """The engine cannot serve this request (e.g. shutting down, capability missing)."""

    code = "unavailable"
    http_status = 503


ERROR_CODES = (
    "bad_message",
    "unknown_type",
    "not_ready",
    "unauthorized",
    "too_large",
    "limit",
    "duplicate_id",
    "unknown_id",
    "voice_not_found",
    "unsupported_audio",
    "engine_error",
    "unavailable",
    "internal",
)
