"""Every rule of docs/protocol.md on the Sans-I/O connection: frames in, frames out, no sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import pytest

from server.errors import BadMessage, DuplicateId, NotReady, Overloaded, TooLarge, UnknownType, VoiceNotFound
from server.protocol import (
    Audio,
    Done,
    Error,
    Hello,
    Pong,
    QueueLimits,
    ServerConnection,
    Speak,
    VoiceChunk,
    VoiceRef,
    encode_frame,
)


def hello(**fields: object) -> str:
    return json.dumps({"type": "hello", "protocol": 1, **fields})


def connected(binary: bool = False, **kwargs: Any) -> ServerConnection:
    connection = ServerConnection(1 << 20, **kwargs)
    frame = msgpack.packb(json.loads(hello())) if binary else hello()
    connection.receive(frame)
    return connection


def sent(connection: ServerConnection) -> list[dict[str, Any]]:
    out = []
    while (frame := connection.next_frame()) is not None:
        out.append(msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame))
    return out


# --- hello ----------------------------------------------------------------------------


def test_hello_first_then_speak_in_msgpack() -> None:
    connection = ServerConnection(1 << 20)
    assert connection.receive(msgpack.packb({"type": "hello", "protocol": 1, "format": "pcm_f32le", "sample_rate": 48000})) == Hello(
        1, None, "pcm_f32le", 48000
    )
    message = connection.receive(msgpack.packb({"type": "speak", "id": "a", "text": "Hi.", "voice": {"design": "calm"}}))
    assert message == Speak("a", "Hi.", VoiceRef(design="calm"), "auto", True)
    connection.send(Pong(1))
    assert sent(connection) == [{"type": "pong", "t": 1}]


def test_anything_before_hello_is_not_ready_and_keeps_its_id() -> None:
    connection = ServerConnection(1 << 20)
    with pytest.raises(NotReady) as caught:
        connection.receive(json.dumps({"type": "cancel", "id": "u1"}))
    assert caught.value.id == "u1"
    connection.receive(hello())
    with pytest.raises(BadMessage, match="already"):
        connection.receive(hello())


def test_before_hello_replies_follow_the_frame_then_the_encoding_of_hello() -> None:
    connection = ServerConnection(1 << 20)
    with pytest.raises(NotReady):
        connection.receive(msgpack.packb({"type": "ping"}))
    assert connection.binary
    connection.receive(hello())
    connection.open("a")
    connection.send_audio("a", b"\x01\x02")
    assert sent(connection) == [{"type": "audio", "id": "a", "seq": 0, "data": "AQI="}]


@pytest.mark.parametrize("bad", [{"protocol": 2}, {"format": "mp3"}, {"sample_rate": 8000}, {"sample_rate": True}])
def test_hello_rejects_what_the_server_cannot_do(bad: dict[str, object]) -> None:
    with pytest.raises(BadMessage):
        ServerConnection(1 << 20).receive(hello(**bad))


# --- frames ---------------------------------------------------------------------------------


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
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {"design": " "}}', BadMessage, "non-empty"),
        ('{"type": "speak", "id": "", "text": "hi", "voice": {"design": "x"}}', BadMessage, "empty"),
        ('{"type": "speak", "id": 5, "text": "hi", "voice": {"design": "x"}}', BadMessage, "string"),
        ('{"type": "speak", "id": "' + "i" * 129 + '", "text": "hi", "voice": {"design": "x"}}', BadMessage, "longer than 128"),
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {"design": "x"}, "final": "yes"}', BadMessage, "true or false"),
        ('{"type": "speak", "id": "a", "text": "hi", "voice": {"design": "' + "d" * 2001 + '"}}', BadMessage, "2000"),
        ('{"type": "cancel"}', BadMessage, "'id' is required"),
        ('{"type": "voice_chunk", "ref": "r", "data": 1}', BadMessage, "bytes"),
        ('{"type": "voice_chunk", "ref": "r", "data": "not base64!"}', BadMessage, "base64"),
        ('{"type": "ping", "t": {"nested": 1}}', BadMessage, "number or a short string"),
        ('{"type": "ping", "t": "' + "t" * 257 + '"}', BadMessage, "256"),
        ('{"type": "ping", "t": -1000000000000000000000000000000}', BadMessage, "64-bit"),
        ("[" * 200_000 + "]" * 200_000, BadMessage, "not valid JSON"),
    ],
)
def test_malformed_messages_raise_with_the_field_named(frame: str | bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        connected().receive(frame)


def test_bytes_fields_are_base64_in_text_frames_and_raw_in_msgpack() -> None:
    assert connected().receive(json.dumps({"type": "voice_chunk", "ref": "r", "data": base64.b64encode(b"abc").decode()})) == VoiceChunk(
        "r", b"abc"
    )
    assert connected(binary=True).receive(msgpack.packb({"type": "voice_chunk", "ref": "r", "data": b"abc"})) == VoiceChunk("r", b"abc")


def test_errors_keep_the_id_or_ref_they_concern() -> None:
    connection = connected()
    with pytest.raises(BadMessage) as caught:
        connection.receive(json.dumps({"type": "speak", "id": "u7", "text": 3, "voice": {"design": "x"}}))
    connection.send_error(caught.value)
    connection.send_error(VoiceNotFound("no such voice"), ref="r2")
    assert sent(connection) == [
        {"type": "error", "code": "bad_message", "message": "'text' must be a string", "fatal": False, "id": "u7"},
        {"type": "error", "code": "voice_not_found", "message": "no such voice", "fatal": False, "ref": "r2"},
    ]


def test_oversized_frames_are_fatal() -> None:
    with pytest.raises(TooLarge) as caught:
        ServerConnection(max_message_bytes=100).receive("x" * 101)
    assert caught.value.fatal and caught.value.close_code == 1009


def test_encode_frame_round_trips_bytes_both_ways() -> None:
    audio = Audio("a", 3, b"\x00\xff")
    assert msgpack.unpackb(encode_frame(audio, binary=True)) == {"type": "audio", "id": "a", "seq": 3, "data": b"\x00\xff"}
    assert json.loads(encode_frame(audio, binary=False))["data"] == base64.b64encode(b"\x00\xff").decode()


def test_text_with_a_lone_surrogate_still_encodes_in_both_encodings() -> None:
    for binary in (True, False):
        frame = encode_frame(Error("bad_message", "bad \ud800 text", id="\udfff"), binary=binary)
        decoded = msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)
        assert decoded["code"] == "bad_message"


# --- utterances -------------------------------------------------------------------------------


def test_seq_counts_per_id_and_done_is_last_and_once() -> None:
    connection = connected()
    connection.open("a")
    connection.open("b")
    connection.send_audio("a", b"1")
    connection.send_audio("b", b"2")
    connection.send_audio("a", b"3")
    assert connection.send_done("a", cancelled=False, audio_ms=40, ttfa_ms=5.0, rtf=0.1)
    connection.send_audio("a", b"late")
    assert not connection.send_done("a", cancelled=False)
    messages = sent(connection)
    assert [(m["type"], m.get("id"), m.get("seq")) for m in messages] == [
        ("audio", "a", 0),
        ("audio", "b", 0),
        ("audio", "a", 1),
        ("done", "a", None),
    ]
    assert messages[-1] == {"type": "done", "id": "a", "cancelled": False, "audio_ms": 40, "ttfa_ms": 5.0, "rtf": 0.1}
    assert connection.open_ids == ["b"]


def test_an_id_may_be_reused_once_done() -> None:
    connection = connected()
    connection.open("a")
    with pytest.raises(DuplicateId):
        connection.open("a")
    connection.send_done("a", cancelled=True)
    connection.open("a")
    connection.send_audio("a", b"x")
    assert sent(connection)[-1]["seq"] == 0


def test_cancelled_done_takes_back_queued_audio_of_that_id_only() -> None:
    connection = connected()
    connection.open("a")
    connection.open("b")
    for _ in range(3):
        connection.send_audio("a", b"aa")
        connection.send_audio("b", b"bb")
    connection.send_done("a", cancelled=True)
    assert [(m["type"], m["id"]) for m in sent(connection)] == [("audio", "b")] * 3 + [("done", "a")]
    assert connection.queued_bytes == 0


def test_a_refused_speak_gets_its_error_then_done() -> None:
    connection = connected()
    connection.open("x")
    connection.refuse("x", VoiceNotFound("no saved voice 'v'"))
    assert sent(connection) == [
        {"type": "error", "code": "voice_not_found", "message": "no saved voice 'v'", "fatal": False, "id": "x"},
        {"type": "done", "id": "x", "cancelled": True, "audio_ms": 0, "ttfa_ms": None, "rtf": None},
    ]


# --- the send queue ----------------------------------------------------------------------------


def test_audio_producers_see_the_high_water_mark() -> None:
    connection = connected(limits=QueueLimits(audio_high_water_bytes=1000))
    connection.open("a")
    connection.send_audio("a", b"x" * 600)
    assert connection.audio_room
    connection.send_audio("a", b"x" * 600)
    assert not connection.audio_room
    connection.next_frame()
    assert connection.audio_room


def test_a_client_that_never_reads_overloads_the_connection_and_memory_stays_bounded() -> None:
    connection = connected(limits=QueueLimits(max_frames=100, max_bytes=10_000))
    for i in range(1000):
        connection.send(Pong(str(i) * 20))
    assert connection.failure is not None and connection.failure.fatal and connection.failure.code == "limit"
    assert connection.queued_bytes == 0 and connection.next_frame() is None
    frame = connection.failure_frame()
    assert frame is not None and json.loads(frame)["code"] == "limit"


def test_done_and_errors_are_typed_messages() -> None:
    assert Done("a", True).type == "done" and Error.of(NotReady("x"), id="i").id == "i"


def test_a_client_that_never_says_hello_is_dropped_after_a_few_answers() -> None:
    connection = ServerConnection(1 << 20)
    for i in range(8):
        with pytest.raises((NotReady, BadMessage)):
            connection.receive(json.dumps({"type": "ping"}) if i % 2 else "junk")
    with pytest.raises(Overloaded) as caught:
        connection.receive("junk")
    assert caught.value.fatal and caught.value.code == "limit"


def test_segments_go_only_to_clients_that_asked_and_nothing_follows_done() -> None:
    from server.protocol import Flushed, Segment

    plain, timed = connected(), ServerConnection(1 << 20)
    timed.receive(hello(segments=True))
    for connection in (plain, timed):
        connection.open("a")
        connection.send_about(Segment("a", 0, "Hi.", 0, 3, 0))
        connection.send_about(Flushed("a"))
        connection.send_done("a", cancelled=False)
        connection.send_about(Flushed("a"))
    assert [m["type"] for m in sent(plain)] == ["flushed", "done"]
    assert [m["type"] for m in sent(timed)] == ["segment", "flushed", "done"]


def test_flush_is_a_client_message() -> None:
    from server.protocol import Flush

    assert connected().receive(json.dumps({"type": "flush", "id": "a"})) == Flush("a")
    with pytest.raises(BadMessage, match="true or false"):
        ServerConnection(1 << 20).receive(hello(segments="yes"))
