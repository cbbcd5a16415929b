"""Protocol v1, free of I/O: frames in, typed messages out, and back.

A frame is one WebSocket message (or one WebRTC data-channel message): a
binary frame holds a msgpack map, a text frame a JSON object with the same
keys, byte fields as base64 strings.

``ServerConnection`` owns the rules of docs/protocol.md for one connection,
the way websockets' ``protocol.py`` does for the WebSocket protocol: ``hello``
first and once; the open utterance ids; ``seq`` 0, 1, 2... per id; ``done``
last and exactly once per id; ``error`` stamped with the id or ref it
concerns; replies in the encoding of the client's ``hello``; and a bounded
queue of frames to send, from which a cancelled utterance's audio can be
taken back. Nothing here touches a socket or an event loop, so both
transports share it and every rule is tested without either.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

from .errors import BadMessage, DuplicateId, MineStreamError, NotReady, Overloaded, TooLarge, UnknownType

PROTOCOL_VERSION = 1
FORMATS = ("pcm_s16le", "pcm_f32le", "opus")
SAMPLE_RATES = (24000, 16000, 22050, 44100, 48000)
OPUS_SAMPLE_RATES = (24000, 48000)
"""``format: "opus"``: each utterance's audio is one Ogg/Opus stream, at one of these input rates."""
MAX_ID_CHARS = 128
MAX_ECHO_CHARS = 256
MAX_BEFORE_HELLO = 8
"""Messages answered with not_ready before the connection is dropped: a client that ignores
the first answers is not a client, and each answer costs memory until it is read."""

Frame = Union[bytes, str]


# --- client messages -------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    protocol: int = PROTOCOL_VERSION
    token: str | None = None
    format: str = "pcm_s16le"
    sample_rate: int = 24000
    segments: bool = False
    """Send a ``segment`` message before each piece of text's audio (an addition to v1: opt-in)."""


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
class Flush:
    """Speak what is buffered now, sentence end or not; ``flushed`` follows its audio."""

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
    t: str | int | float | bool | None = None


ClientMessage = Union[Hello, Speak, Text, End, Cancel, Flush, VoiceBegin, VoiceChunk, VoiceEnd, Ping]


# --- field readers: each raises BadMessage naming the field ----------------


class _Fields:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        # Only ids that could be valid are echoed back in errors.
        self.id = _field(obj, "id")
        self.ref = _field(obj, "ref")

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

    def echo(self, key: str) -> str | int | float | bool | None:
        """A value the server sends back as it came: a scalar, and short, so replies stay small."""
        value = self.obj.get(key)
        if isinstance(value, str) and len(value) > MAX_ECHO_CHARS:
            raise self._bad(f"'{key}' is longer than {MAX_ECHO_CHARS} characters")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise self._bad(f"'{key}' must be a number or a short string")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            # msgpack (and JSON clients in general) hold 64-bit integers; a bigger one cannot be echoed.
            raise self._bad(f"'{key}' is out of the 64-bit integer range")
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
    rates = OPUS_SAMPLE_RATES if fmt == "opus" else SAMPLE_RATES
    if rate not in rates or isinstance(rate, bool):
        raise BadMessage(f"'sample_rate' must be one of {', '.join(map(str, rates))}" + (" for opus" if fmt == "opus" else ""))
    return Hello(protocol, f.text("token", required=False, max_len=512), fmt, rate, f.flag("segments", False))


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
    "flush": lambda f, t: Flush(f.ident("id")),
    "voice_begin": _parse_voice_begin,
    "voice_chunk": lambda f, t: VoiceChunk(f.ident("ref"), f.blob("data", text_frame=t)),
    "voice_end": lambda f, t: VoiceEnd(f.ident("ref")),
    "ping": lambda f, t: Ping(f.echo("t")),
}


# --- server messages ---------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    session: str
    engine: dict[str, Any]
    format: str
    sample_rate: int
    limits: dict[str, Any]
    protocol: int = PROTOCOL_VERSION
    type: ClassVar[str] = "ready"


@dataclass(frozen=True)
class Audio:
    id: str
    seq: int
    data: bytes = field(repr=False)
    type: ClassVar[str] = "audio"


@dataclass(frozen=True)
class Done:
    id: str
    cancelled: bool
    audio_ms: int = 0
    ttfa_ms: float | None = None
    rtf: float | None = None
    type: ClassVar[str] = "done"


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    fatal: bool = False
    id: str | None = None
    ref: str | None = None
    type: ClassVar[str] = "error"

    @classmethod
    def of(cls, exc: MineStreamError, *, id: str | None = None, ref: str | None = None) -> Error:
        return cls(exc.code, exc.message, exc.fatal, id if id is not None else exc.id, ref if ref is not None else exc.ref)


@dataclass(frozen=True)
class VoiceSaved:
    """``voice``: the upload ``ref`` became a saved voice."""

    ref: str
    voice_id: str
    name: str
    duration_ms: int
    type: ClassVar[str] = "voice"


@dataclass(frozen=True)
class Progress:
    ref: str
    decoded_ms: int
    type: ClassVar[str] = "progress"


@dataclass(frozen=True)
class Flushed:
    """The audio of all text an utterance had when ``flush`` came has been sent."""

    id: str
    type: ClassVar[str] = "flushed"


@dataclass(frozen=True)
class Segment:
    """Which text the audio that follows speaks: ``text_start``/``text_end`` index the utterance's
    text as given (``speak.text`` then each ``text``, in code points); ``audio_ms`` is where it
    starts in the utterance's audio."""

    id: str
    index: int
    text: str
    text_start: int
    text_end: int
    audio_ms: int
    type: ClassVar[str] = "segment"


@dataclass(frozen=True)
class Pong:
    t: str | int | float | bool | None = None
    type: ClassVar[str] = "pong"


ServerMessage = Union[Ready, Audio, Done, Error, VoiceSaved, Progress, Flushed, Segment, Pong]

_OPTIONAL = {"id", "ref"}  # left out of the wire form when None (error)


def wire_form(message: ServerMessage) -> dict[str, Any]:
    """The message as the map that goes on the wire."""
    out: dict[str, Any] = {"type": message.type}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        if value is None and name in _OPTIONAL:
            continue
        out[name] = value
    return out


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
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        kind = "JSON" if isinstance(frame, str) else "msgpack"
        raise BadMessage(f"frame is not valid {kind}: {type(exc).__name__}") from None
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


def encode_frame(message: ServerMessage, *, binary: bool) -> Frame:
    """The frame for ``message``. Never fails on text a client sent: bad surrogates are replaced."""
    wire = wire_form(message)
    if binary:
        packed: bytes = msgpack.packb(wire, use_bin_type=True, unicode_errors="replace")
        return packed
    # ensure_ascii escapes every non-ASCII character, lone surrogates included.
    return json.dumps(_to_json(wire), separators=(",", ":"))


def _to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


# --- the connection ------------------------------------------------------------


@dataclass(frozen=True)
class QueueLimits:
    """How much one connection may have waiting to be sent."""

    max_frames: int = 1024
    max_bytes: int = 16 << 20
    audio_high_water_bytes: int = 1 << 20
    """Audio producers wait above this; control messages never wait, but count towards the maximum."""


@dataclass
class _Queued:
    frame: Frame
    size: int
    audio_of: str | None = None


class ServerConnection:
    """The server side of one protocol v1 connection, without I/O.

    ``receive(frame)`` parses what the client sent and enforces the ``hello``
    rule; the ``send_*`` methods queue replies, enforcing the utterance rules;
    ``next_frame()`` hands the transport the next frame to write. When the
    client stops reading and the queue passes its bounds, ``failure`` is set
    and nothing more is queued: the transport sends it and closes.
    """

    def __init__(self, max_message_bytes: int, limits: QueueLimits | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.limits = limits or QueueLimits()
        self.hello: Hello | None = None
        self.binary = False
        self.failure: Overloaded | None = None
        self._before_hello = 0
        self._seq: dict[str, int] = {}
        self._queue: deque[_Queued] = deque()
        self.queued_bytes = 0
        self.queued_audio_bytes = 0
        self.on_change: Callable[[], None] = lambda: None
        """Called whenever the queue changes (the I/O side wakes its writer there)."""
        self.on_error: Callable[[Error], None] = lambda error: None
        """Called for every error queued (metrics count them there)."""

    # --- input -------------------------------------------------------------

    def receive(self, frame: Frame) -> ClientMessage:
        """The client's message; raises the ``MineStreamError`` to report."""
        if self.hello is not None:
            message = parse_message(decode_frame(frame, self.max_message_bytes), text_frame=isinstance(frame, str))
            if isinstance(message, Hello):
                raise BadMessage("'hello' was already received")
            return message
        # Until hello, answer in the encoding the client is speaking.
        self.binary = isinstance(frame, bytes)
        try:
            return self._receive_hello(frame)
        except MineStreamError as exc:
            self._before_hello += 1
            if not exc.fatal and self._before_hello > MAX_BEFORE_HELLO:
                raise Overloaded(f"more than {MAX_BEFORE_HELLO} messages that are not a valid 'hello'") from None
            raise

    def _receive_hello(self, frame: Frame) -> Hello:
        obj = decode_frame(frame, self.max_message_bytes)
        message = parse_message(obj, text_frame=isinstance(frame, str))
        if not isinstance(message, Hello):
            raise NotReady("send 'hello' first", id=_field(obj, "id"), ref=_field(obj, "ref"))
        self.hello = message
        return message

    # --- utterances ----------------------------------------------------------

    def open(self, utterance_id: str) -> None:
        """An utterance starts: its audio may be sent until its ``done``."""
        if utterance_id in self._seq:
            raise DuplicateId(f"utterance {utterance_id!r} is still open", id=utterance_id)
        self._seq[utterance_id] = 0

    def is_open(self, utterance_id: str) -> bool:
        return utterance_id in self._seq

    @property
    def open_ids(self) -> list[str]:
        """Open utterances, in the order they were opened."""
        return list(self._seq)

    # --- output ----------------------------------------------------------------

    def send(self, message: Ready | VoiceSaved | Progress | Pong) -> None:
        self._put(message)

    def send_about(self, message: Segment | Flushed) -> None:
        """A message about an open utterance: dropped once its ``done`` has gone (done stays last);
        ``segment`` only for a client whose ``hello`` asked for them."""
        if isinstance(message, Segment) and not (self.hello is not None and self.hello.segments):
            return
        if message.id in self._seq:
            self._put(message)

    def send_audio(self, utterance_id: str, data: bytes) -> None:
        """Audio for an open utterance; dropped once its ``done`` has gone."""
        seq = self._seq.get(utterance_id)
        if seq is None:
            return
        self._seq[utterance_id] = seq + 1
        self._put(Audio(utterance_id, seq, data), audio_of=utterance_id)

    def send_done(self, utterance_id: str, *, cancelled: bool, audio_ms: int = 0, ttfa_ms: float | None = None, rtf: float | None = None) -> bool:
        """The last message of an open utterance. False (nothing sent) if it was not open."""
        if self._seq.pop(utterance_id, None) is None:
            return False
        if cancelled:
            self.discard_audio(utterance_id)
        self._put(Done(utterance_id, cancelled, audio_ms, ttfa_ms, rtf))
        return True

    def send_error(self, exc: MineStreamError, *, id: str | None = None, ref: str | None = None) -> None:
        error = Error.of(exc, id=id, ref=ref)
        self.on_error(error)
        self._put(error)

    def refuse(self, utterance_id: str, exc: MineStreamError) -> None:
        """A ``speak`` refused before any audio: its error, then the ``done`` every speak ends with."""
        self.send_error(exc, id=utterance_id)
        self.send_done(utterance_id, cancelled=True)

    def discard_audio(self, utterance_id: str) -> None:
        """Take back the utterance's audio not yet sent (barge-in is immediate)."""
        kept: deque[_Queued] = deque()
        for item in self._queue:
            if item.audio_of == utterance_id:
                self._account(item, -1)
            else:
                kept.append(item)
        self._queue = kept
        self.on_change()

    # --- the queue ---------------------------------------------------------------

    @property
    def audio_room(self) -> bool:
        """Whether an audio producer may queue more now."""
        return self.queued_audio_bytes < self.limits.audio_high_water_bytes

    def next_frame(self) -> Frame | None:
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._account(item, -1)
        return item.frame

    def failure_frame(self) -> Frame | None:
        """The error that ends an overloaded connection, encoded; None while all is well."""
        return None if self.failure is None else encode_frame(Error.of(self.failure), binary=self.binary)

    def _put(self, message: ServerMessage, *, audio_of: str | None = None) -> None:
        if self.failure is not None:
            return
        frame = encode_frame(message, binary=self.binary)
        item = _Queued(frame, len(frame), audio_of)
        if len(self._queue) >= self.limits.max_frames or self.queued_bytes + item.size > self.limits.max_bytes:
            self.failure = Overloaded(
                f"more than {self.limits.max_frames} messages or {self.limits.max_bytes} bytes are waiting: the client is not reading"
            )
            self._queue.clear()
            self.queued_bytes = self.queued_audio_bytes = 0
        else:
            self._queue.append(item)
            self._account(item, +1)
        self.on_change()

    def _account(self, item: _Queued, sign: int) -> None:
        self.queued_bytes += sign * item.size
        if item.audio_of is not None:
            self.queued_audio_bytes += sign * item.size


def _field(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else None
