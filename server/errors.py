"""The error tree. Every error MineStream reports carries a protocol v1 code.

::

    MineStreamError        internal           500   a bug; the server has logged it
    ├── BadMessage         bad_message        400   malformed frame, invalid field, second hello
    │   └── NothingToSay   bad_message        400   text with nothing speakable in it
    ├── UnknownType        unknown_type       400
    ├── NotReady           not_ready          400   a message before hello
    │   └── HelloTimeout   not_ready                fatal, close 1008: no hello in time
    ├── Unauthorized       unauthorized       401   fatal, close 1008
    │   └── Forbidden      unauthorized       403   a page from a foreign Origin
    ├── TooLarge           too_large          413   fatal, close 1009
    ├── LimitExceeded      limit              429   text, utterances, uploads, reference length
    │   ├── TooManySessions  limit            503   fatal, close 1013 (try again later)
    │   ├── Overloaded     limit                    fatal, close 1008: the client stopped reading
    │   └── IdleTimeout    limit                    fatal, close 1001: nothing sent for too long
    ├── DuplicateId        duplicate_id       409
    ├── UnknownId          unknown_id         404
    ├── VoiceNotFound      voice_not_found    404
    ├── UnsupportedAudio   unsupported_audio  415
    ├── EngineError        engine_error       500
    └── Unavailable        unavailable        503   no such capability, or shutting down
        └── UnsupportedLanguage  unavailable    400   a language the engine does not speak

A ``fatal`` error ends the connection with ``close_code`` after the error
message; every other error is answered with an ``error`` message and the
session carries on. ``id``/``ref`` name the utterance or upload an error
belongs to when the raiser knows it; the connection stamps them otherwise.
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


class NothingToSay(BadMessage):
    """The text has no letter or digit in any script: there is nothing to speak."""


class UnknownType(MineStreamError):
    code = "unknown_type"
    http_status = 400


class NotReady(MineStreamError):
    """A message other than ``hello`` came before ``hello``."""

    code = "not_ready"
    http_status = 400


class HelloTimeout(NotReady):
    fatal = True
    close_code = 1008


class Unauthorized(MineStreamError):
    code = "unauthorized"
    fatal = True
    close_code = 1008
    http_status = 401


class Forbidden(Unauthorized):
    """A browser page from another origin asked for something that costs or changes."""

    http_status = 403


class TooLarge(MineStreamError):
    """A message or body exceeds its size limit: fatal, since the stream is untrustworthy."""

    code = "too_large"
    fatal = True
    close_code = 1009
    http_status = 413


class LimitExceeded(MineStreamError):
    """A configured limit (text length, open utterances, reference length, sessions)."""

    code = "limit"
    http_status = 429


class TooManySessions(LimitExceeded):
    fatal = True
    close_code = 1013  # try again later
    http_status = 503


class Overloaded(LimitExceeded):
    """The client does not read what it asked for: its queue is full, or a send timed out."""

    fatal = True
    close_code = 1008


class IdleTimeout(LimitExceeded):
    fatal = True
    close_code = 1001  # going away


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


class UnsupportedLanguage(Unavailable):
    """The request is for a language this engine does not speak: the client's to change."""

    http_status = 400


def error_codes() -> list[str]:
    """Every code of the tree, sorted: the protocol's error codes."""

    def walk(cls: type[MineStreamError]) -> set[str]:
        return {cls.code}.union(*(walk(sub) for sub in cls.__subclasses__()))

    return sorted(walk(MineStreamError))
