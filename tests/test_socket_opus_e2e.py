"""``hello.format: "opus"`` through the real server over TLS, spoken to with ``websockets`` directly.

Each utterance's pages must decode (PyAV) to the duration the server reports
in ``done.audio_ms`` (the PCM it made) and be speech; the bytes are compared
with a PCM session speaking the same text; cancel still ends with ``done``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.audio_checks import assert_speech, decode
from tests.conftest import LiveServer
from tests.ogg_pages import assert_one_stream

TEXT = "A phone on a mobile network gets about a tenth of the bytes. The speech sounds the same."
TIMEOUT_S = 60


class Socket:
    """Protocol v1 by hand: msgpack (or JSON) frames over one WebSocket."""

    def __init__(self, ws: ClientConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    async def send(self, **message: Any) -> None:
        await self.ws.send(msgpack.packb(message) if self.binary else json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT_S)
        if isinstance(frame, bytes):
            message: dict[str, Any] = msgpack.unpackb(frame)
            return message
        message = json.loads(frame)
        if message.get("type") == "audio":
            message["data"] = base64.b64decode(message["data"])
        return message

    async def until(self, type: str, **match: Any) -> list[dict[str, Any]]:
        got = []
        for _ in range(20_000):
            got.append(await self.receive())
            if got[-1]["type"] == type and all(got[-1].get(k) == v for k, v in match.items()):
                return got
        raise AssertionError(f"no {type} {match}")

    async def speak(self, id: str, text: str) -> tuple[list[bytes], dict[str, Any]]:
        await self.send(type="speak", id=id, text=text, voice={"design": "a calm, clear voice"})
        messages = await self.until("done", id=id)
        assert [m["type"] for m in messages] == ["audio"] * (len(messages) - 1) + ["done"], messages[-1]
        return [m["data"] for m in messages[:-1]], messages[-1]


@asynccontextmanager
async def session(server: LiveServer, *, binary: bool = True, **hello: Any) -> AsyncIterator[Socket]:
    async with connect(server.ws_url, ssl=server.ssl_context(), max_size=None, compression=None) as ws:
        socket = Socket(ws, binary)
        await socket.send(type="hello", protocol=1, **hello)
        ready = await socket.receive()
        assert ready["type"] == "ready", ready
        assert (ready["format"], ready["sample_rate"]) == (hello.get("format", "pcm_s16le"), hello.get("sample_rate", 24000))
        yield socket


@pytest.mark.parametrize(("rate", "binary"), [(24000, True), (48000, False)])
async def test_opus_pages_decode_to_the_speech_the_server_made(server: LiveServer, rate: int, binary: bool) -> None:
    async with session(server, binary=binary, format="opus", sample_rate=rate) as socket:
        data, done = await socket.speak("o", TEXT)
    assert done["cancelled"] is False
    assert_one_stream(data)
    samples, decoded_rate = decode(b"".join(data), "opus")
    assert decoded_rate == 48000
    # The same duration as the PCM the server made for it (done.audio_ms), to within an Opus frame.
    assert abs(len(samples) / 48 - done["audio_ms"]) <= 20, (len(samples) / 48, done["audio_ms"])
    assert_speech(samples, decoded_rate, TEXT)


async def test_opus_is_about_a_tenth_of_pcm_for_the_same_text(server: LiveServer) -> None:
    async with session(server, format="pcm_s16le") as pcm_socket:
        pcm_data, pcm_done = await pcm_socket.speak("p", TEXT)
    async with session(server, format="opus") as opus_socket:
        opus_data, opus_done = await opus_socket.speak("o", TEXT)
    pcm = np.frombuffer(b"".join(pcm_data), dtype="<i2")
    decoded, _ = decode(b"".join(opus_data), "opus")
    # The same text makes the same speech in either format (the preview engine's pace varies a few percent).
    assert abs(len(decoded) / 48000 - len(pcm) / 24000) <= 0.05 * len(pcm) / 24000 + 0.02
    ratio = len(pcm) * 2 / len(b"".join(opus_data))
    print(f"\nPCM {len(pcm) * 2} B, Opus {len(b''.join(opus_data))} B for {pcm_done['audio_ms']} / {opus_done['audio_ms']} ms: ratio {ratio:.1f}")
    assert 8 < ratio < 16, ratio


async def test_cancel_mid_utterance_ends_with_done_and_no_audio_after_it(server: LiveServer) -> None:
    long_text = " ".join([TEXT] * 6)
    async with session(server, format="opus") as socket:
        await socket.send(type="speak", id="c", text=long_text, voice={"design": "a calm, clear voice"})
        first = await socket.until("audio", id="c")
        await socket.send(type="cancel", id="c")
        rest = await socket.until("done", id="c")
        assert rest[-1]["cancelled"] is True
        await socket.send(type="ping", t=7)
        after = await socket.until("pong")
        assert [m["type"] for m in after] == ["pong"], "audio came after done"
        data = [m["data"] for m in first + rest if m["type"] == "audio"]
        assert data[0].startswith(b"OggS")
        # What came before the cancel still decodes (a cut stream plays up to where it stops).
        samples, _ = decode(b"".join(data), "opus")
        assert len(samples) > 0
        # And the session goes on with a fresh, complete stream.
        again, done = await socket.speak("d", "Still here.")
        assert done["cancelled"] is False
        assert_one_stream(again)
