"""Protocol v1 without sockets: frames in, messages out."""

from __future__ import annotations

import base64
import json

import msgpack
import pytest

from server.errors import BadMessage, NotReady, TooLarge, UnknownType
from server.protocol import Hello, Protocol, Speak, VoiceChunk, VoiceRef, encode_frame, error_message


def hello(**fields: object) -> dict[str, object]:
    return {"type": "hello", "protocol": 1, **fields}


def test_hello_first_then_speak_in_msgpack() -> None:
    protocol = Protocol(max_message_bytes=1 << 20)
    assert protocol.receive(msgpack.packb(hello(format="pcm_f32le", sample_rate=48000))) == Hello(1, None, "pcm_f32le", 48000)
    message = protocol.receive(msgpack.packb({"type": "speak", "id": "a", "text": "Hi.", "voice": {"design": "calm"}}))
    assert message == Speak("a", "Hi.", VoiceRef(design="calm"), "auto", True)
    assert protocol.binary
    assert msgpack.unpackb(protocol.send({"type": "pong", "t": 1})) == {"type": "pong", "t": 1}


def test_replies_follow_the_encoding_of_hello() -> None:
    protocol = Protocol(1 << 20)
    protocol.receive(json.dumps(hello()))
    assert json.loads(protocol.send({"type": "audio", "id": "a", "seq": 0, "data": b"\x01\x02"}))["data"] == "AQI="


def test_bytes_fields_are_base64_in_text_frames() -> None:
    protocol = Protocol(1 << 20)
    protocol.receive(json.dumps(hello()))
    chunk = protocol.receive(json.dumps({"type": "voice_chunk", "ref": "r", "data": base64.b64encode(b"abc").decode()}))
    assert chunk == VoiceChunk("r", b"abc")
    with pytest.raises(BadMessage, match="base64"):
        protocol.receive(json.dumps({"type": "voice_chunk", "ref": "r", "data": "not base64!"}))


def test_anything_before_hello_is_not_ready() -> None:
    protocol = Protocol(1 << 20)
    with pytest.raises(NotReady):
        protocol.receive(json.dumps({"type": "ping"}))
    protocol.receive(json.dumps(hello()))
    with pytest.raises(BadMessage, match="already"):
        protocol.receive(json.dumps(hello()))


@pytest.mark.parametrize(
    ("frame", "error", "text"),
    [
        ("{not json", BadMessage, "not valid JSON"),
        (b"\xc1", BadMessage, "not valid msgpack"),
        ("[1, 2]", BadMessage, "object"),
        ('{"no": "type"}', BadMessage, "no 'type'"),
        ('{"type": "dance"}', UnknownType, "dance"),
        ('{"type": "speak", "id": "a", "voice": {"design": "x"}}', BadMessage, "'text' is required"),
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {}}', BadMessage, "exactly one"),
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {"design": "x", "voice_id": "y"}}', BadMessage, "exactly one"),
        ('{"type": "speak", "id": "", "text": "hi", "voice": {"design": "x"}}', BadMessage, "empty"),
        ('{"type": "speak", "id": 5, "text": "hi", "voice": {"design": "x"}}', BadMessage, "string"),
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {"design": "x"}, "final": "yes"}', BadMessage, "true or false"),
        ('{"type": "cancel"}', BadMessage, "'id' is required"),
    ],
)
def test_malformed_messages_raise_with_the_field_named(frame: str | bytes, error: type[Exception], text: str) -> None:
    protocol = Protocol(1 << 20)
    protocol.receive(json.dumps(hello()))
    with pytest.raises(error, match=text):
        protocol.receive(frame)


def test_errors_keep_the_id_they_concern() -> None:
    protocol = Protocol(1 << 20)
    protocol.receive(json.dumps(hello()))
    with pytest.raises(BadMessage) as caught:
        protocol.receive(json.dumps({"type": "speak", "id": "u7", "text": 3, "voice": {"design": "x"}}))
    assert error_message(caught.value) == {"type": "error", "code": "bad_message", "message": "'text' must be a string", "fatal": False, "id": "u7"}


@pytest.mark.parametrize("bad", [{"protocol": 2}, {"format": "mp3"}, {"sample_rate": 8000}, {"sample_rate": True}])
def test_hello_rejects_what_the_server_cannot_do(bad: dict[str, object]) -> None:
    with pytest.raises(BadMessage):
        Protocol(1 << 20).receive(json.dumps({**hello(), **bad}))


def test_oversized_frames_are_fatal() -> None:
    protocol = Protocol(max_message_bytes=100)
    with pytest.raises(TooLarge) as caught:
        protocol.receive("x" * 101)
    assert caught.value.fatal and caught.value.close_code == 1009


def test_encode_frame_round_trips_bytes_both_ways() -> None:
    message = {"type": "audio", "id": "a", "seq": 3, "data": b"\x00\xff"}
    assert msgpack.unpackb(encode_frame(message, binary=True)) == message
    assert json.loads(encode_frame(message, binary=False))["data"] == base64.b64encode(b"\x00\xff").decode()
