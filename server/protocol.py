"""Protocol v1, free of I/O: frames in, typed messages out, and back.

A frame is one WebSocket message (or one WebRTC data-channel message): a
binary frame holds a msgpack map, a text frame a JSON object with the same
keys, byte fields as base64 strings. ``Protocol`` is the per-connection state
machine: ``hello`` first, then everything else; replies are encoded the way
the client's ``hello`` was. Nothing here touches a socket, so the WebSocket
and WebRTC transports share it and it is tested without either.

See docs/protocol.md for the contract.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

from .errors import BadMessage, MineStreamError, NotReady, TooLarge, UnknownType

PROTOCOL_VERSION = 1
FORMATS = ("pcm_s16le", "pcm_f32le")
SAMPLE_RATES = (24000, 16000, 22050, 44100, 48000)
MAX_ID_CHARS = 128

Frame = Union[bytes, str]


# --- client messages -------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    protocol: int = PROTOCOL_VERSION
    token: str | None = None
    format: str = "pcm_s16le"
    sample_rate: int = 24000


@dataclass(frozen=True)
class VoiceRef:
    """``voice`` of ``speak``: exactly one of ``design`` or ``voice_id``."""

    design: str | None = None
    voice_id: str | None = None


@dataclass(frozen=True)
class Speak:
    id: str
    text: str
    voice: VoiceRef
    language: str = "auto"
    final: bool = True


@dataclass(frozen=True)
class Text:
    id: str
    text: str


@dataclass(frozen=True)
class End:
    id: str


@dataclass(frozen=True)
class Cancel:
    id: str


@dataclass(frozen=True)
class VoiceBegin:
    ref: str
    name: str | None = None
    ref_text: str | None = None
    mime: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class VoiceChunk:
    ref: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class VoiceEnd:
    ref: str


@dataclass(frozen=True)
class Ping:
    t: Any = None


ClientMessage = Union[Hello, Speak, Text, End, Cancel, VoiceBegin, VoiceChunk, VoiceEnd, Ping]


# --- field readers: each raises BadMessage naming the field ----------------


class _Fields:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.id = obj.get("id") if isinstance(obj.get("id"), str) else None
        self.ref = obj.get("ref") if isinstance(obj.get("ref"), str) else None

    def _bad(self, message: str) -> BadMessage:
        return BadMessage(message, id=self.id, ref=self.ref)

    def text(self, key: str, *, required: bool = True, max_len: int | None = None) -> Any:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self._bad(f"'{key}' is required")
            return None
        if not isinstance(value, str):
            raise self._bad(f"'{key}' must be a string")
        if max_len is not None and len(value) > max_len:
            raise self._bad(f"'{key}' is longer than {max_len} characters")
        return value

    def ident(self, key: str) -> str:
        value: str = self.text(key, max_len=MAX_ID_CHARS)
        if not value:
            raise self._bad(f"'{key}' must not be empty")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(f"'{key}' must be true or false")
        return value

    def blob(self, key: str, *, text_frame: bool) -> bytes:
        value = self.obj.get(key)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and text_frame:
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self._bad(f"'{key}' is not valid base64") from None
        raise self._bad(f"'{key}' must be bytes (base64 in a text frame)")


def _parse_hello(f: _Fields, text_frame: bool) -> Hello:
    protocol = f.obj.get("protocol")
    if protocol != PROTOCOL_VERSION:
        raise BadMessage(f"unsupported protocol {protocol!r}; this server speaks {PROTOCOL_VERSION}")
    fmt = f.obj.get("format", "pcm_s16le")
    if fmt not in FORMATS:
        raise BadMessage(f"'format' must be one of {', '.join(FORMATS)}")
    rate = f.obj.get("sample_rate", 24000)
    if rate not in SAMPLE_RATES or isinstance(rate, bool):
        raise BadMessage(f"'sample_rate' must be one of {', '.join(map(str, SAMPLE_RATES))}")
    return Hello(protocol, f.text("token", required=False, max_len=512), fmt, rate)


def _parse_voice(f: _Fields) -> VoiceRef:
    voice = f.obj.get("voice")
    if not isinstance(voice, dict):
        raise f._bad("'voice' must be an object: {\"design\": ...} or {\"voice_id\": ...}")
    design, voice_id = voice.get("design"), voice.get("voice_id")
    if (design is None) == (voice_id is None):
        raise f._bad("'voice' needs exactly one of 'design' or 'voice_id'")
    if design is not None and (not isinstance(design, str) or not design.strip()):
        raise f._bad("'voice.design' must be a non-empty description")
    if voice_id is not None and (not isinstance(voice_id, str) or not voice_id):
        raise f._bad("'voice.voice_id' must be a non-empty string")
    if design is not None and len(design) > 2000:
        raise f._bad("'voice.design' is longer than 2000 characters")
    return VoiceRef(design=design, voice_id=voice_id)


def _parse_speak(f: _Fields, text_frame: bool) -> Speak:
    return Speak(
        id=f.ident("id"),
        text=f.text("text"),
        voice=_parse_voice(f),
        language=f.text("language", required=False, max_len=32) or "auto",
        final=f.flag("final", True),
    )


def _parse_voice_begin(f: _Fields, text_frame: bool) -> VoiceBegin:
    return VoiceBegin(
        ref=f.ident("ref"),
        name=f.text("name", required=False, max_len=200),
        ref_text=f.text("ref_text", required=False, max_len=5000),
        mime=f.text("mime", required=False, max_len=200),
        source=f.text("source", required=False, max_len=32),
    )


_PARSERS: dict[str, Callable[[_Fields, bool], ClientMessage]] = {
    "hello": _parse_hello,
    "speak": _parse_speak,
    "text": lambda f, t: Text(f.ident("id"), f.text("text")),
    "end": lambda f, t: End(f.ident("id")),
    "cancel": lambda f, t: Cancel(f.ident("id")),
    "voice_begin": _parse_voice_begin,
    "voice_chunk": lambda f, t: VoiceChunk(f.ident("ref"), f.blob("data", text_frame=t)),
    "voice_end": lambda f, t: VoiceEnd(f.ident("ref")),
    "ping": lambda f, t: Ping(f.obj.get("t")),
}


# --- frames ------------------------------------------------------------------


def decode_frame(frame: Frame, max_bytes: int) -> dict[str, Any]:
    """A frame as a dict; raises ``TooLarge`` or ``BadMessage``."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise TooLarge(f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        if isinstance(frame, str):
            obj = json.loads(frame)
        else:
            obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        kind = "JSON" if isinstance(frame, str) else "msgpack"
        raise BadMessage(f"frame is not valid {kind}: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage("a message must be an object (map)")
    return obj


def parse_message(obj: dict[str, Any], *, text_frame: bool) -> ClientMessage:
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise BadMessage("message has no 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise UnknownType(f"unknown message type {kind[:64]!r}")
    return parser(_Fields(obj), text_frame)


def encode_frame(message: dict[str, Any], *, binary: bool) -> Frame:
    if binary:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        return packed
    return json.dumps(_to_json(message), separators=(",", ":"))


def _to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def error_message(exc: MineStreamError) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message, "fatal": exc.fatal}
    if exc.id is not None:
        message["id"] = exc.id
    if exc.ref is not None:
        message["ref"] = exc.ref
    return message


# --- the connection state machine -------------------------------------------


class Protocol:
    """One connection's protocol state: bytes in, messages out, and back.

    ``receive(frame)`` returns the parsed client message or raises a
    ``MineStreamError`` for the caller to report; ``send(message)`` returns the
    frame to write, in the encoding the client chose with ``hello``.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.hello: Hello | None = None
        self.binary = False

    def receive(self, frame: Frame) -> ClientMessage:
        obj = decode_frame(frame, self.max_message_bytes)
        if self.hello is None:
            # Until hello, answer in the encoding the client is speaking.
            self.binary = isinstance(frame, bytes)
        message = parse_message(obj, text_frame=isinstance(frame, str))
        if self.hello is None:
            if not isinstance(message, Hello):
                raise NotReady("send 'hello' first")
            self.hello = message
        elif isinstance(message, Hello):
            raise BadMessage("'hello' was already received")
        return message

    def send(self, message: dict[str, Any]) -> Frame:
        return encode_frame(message, binary=self.binary)
