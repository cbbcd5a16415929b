"""Errors through the real server over TLS: what only the socket, the upgrade and other sessions show.

Every error code and protocol rule is tested in-process (test_connection.py,
test_session.py, test_routes.py); here the same paths run end to end: frames
over a real socket in both encodings, fatal errors and their close codes,
tokens and origins at the upgrade, and a misbehaving client next to a
well-behaved one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client import Client, ServerError
from tests.audio_checks import assert_speech
from tests.conftest import LiveServer


async def next_error(client: Client) -> dict[str, Any]:
    for _ in range(100):
        if client.errors:
            return client.errors.pop(0)
        await asyncio.sleep(0.02)
    raise AssertionError("no error came")


async def still_works(client: Client) -> None:
    assert (await client.ping("alive"))["t"] == "alive"
    speech = await client.say("Still speaking.", design="calm")
    assert_speech(speech.pcm(), 24000, "Still speaking.")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{broken json", "bad_message"),
        (b"\xc1\xc1", "bad_message"),
        (msgpack.packb({"type": "hum"}), "unknown_type"),
        (json.dumps({"type": "cancel", "id": "nope"}), "unknown_id"),
    ],
)
async def test_bad_frames_get_an_error_and_the_session_goes_on(server: LiveServer, frame: str | bytes, code: str) -> None:
    async with await server.client() as client:
        await client.send_raw(frame)
        error = await next_error(client)
        assert error["code"] == code and error["fatal"] is False and error["message"]
        await still_works(client)


async def test_refusals_and_limits_from_the_command_line(server_factory: Any) -> None:
    live = server_factory("--max-text-chars", "60", "--max-open-utterances", "1")
    async with await live.client() as client:
        assert client.ready["limits"]["max_text_chars"] == 60
        with pytest.raises(ServerError, match="limit"):
            await client.say("x" * 61, design="calm")
        speech = await client.speak("Hello.", voice_id="v_0000000000000000")
        with pytest.raises(ServerError) as caught:
            await speech.collect()
        assert caught.value.code == "voice_not_found" and speech.done is not None and speech.done["cancelled"]
        await still_works(client)


async def test_too_large_is_fatal_with_1009_and_spares_other_sessions(server_factory: Any) -> None:
    live = server_factory("--max-message-bytes", "4096")
    async with await live.client() as bystander:
        client = await live.client()
        await client.send_raw(json.dumps({"type": "ping", "t": "x" * 5000}))
        await asyncio.wait_for(client.wait_closed(), 10)
        assert client.ws.close_code == 1009
        assert [e["code"] for e in client.errors] == ["too_large"]
        await client.close()
        # Far beyond the limit the socket layer refuses it the same way.
        client = await live.client()
        await client.send_raw(b"\x00" * 200_000)
        await asyncio.wait_for(client.wait_closed(), 10)
        assert client.ws.close_code == 1009
        await client.close()
        await still_works(bystander)


async def test_token_required_when_set(guarded_server: LiveServer) -> None:
    live = guarded_server
    with pytest.raises(ServerError) as caught:
        await Client.connect(live.ws_url, ssl=live.ssl_context())
    assert caught.value.code == "unauthorized" and caught.value.fatal
    async with connect(live.ws_url, ssl=live.ssl_context()) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "token": "wrong"}))
        assert json.loads(await ws.recv())["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    async with await Client.connect(f"{live.ws_url}?token={live.token}", ssl=live.ssl_context(), token=None) as client:
        await still_works(client)
    async with await live.client() as client:  # token in hello
        assert client.ready["protocol"] == 1
    with live.http() as http:
        assert http.get("/v1/voices").status_code == 401
        assert http.get("/v1/voices", headers={"Authorization": f"Bearer {live.token}"}).status_code == 200
        assert http.get(f"/v1/voices?token={live.token}").status_code == 200
        assert http.get("/ca.pem").status_code == 200


async def test_foreign_origin_is_refused(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await connect(server.ws_url, ssl=server.ssl_context(), additional_headers={"Origin": "https://evil.example"})
    assert caught.value.response.status_code == 403
    async with await server.client(origin=server.base_url) as client:
        assert client.ready["protocol"] == 1


async def test_session_limit(server_factory: Any) -> None:
    live = server_factory("--max-sessions", "1")
    async with await live.client() as first:
        with pytest.raises(ServerError) as caught:
            await live.client()
        assert caught.value.code == "limit"
        await still_works(first)


async def test_unsupported_audio_upload(server: LiveServer) -> None:
    async with await server.client() as client:
        with pytest.raises(ServerError) as caught:
            await client.upload_voice(b"this is not audio at all" * 100, name="junk")
        assert caught.value.code == "unsupported_audio" and "audio" in caught.value.message
        await still_works(client)


async def test_a_crashing_client_does_not_touch_other_sessions(server: LiveServer) -> None:
    async with await server.client() as steady:
        talker = await steady.speak("This keeps talking while a neighbour misbehaves. And it goes on.", design="calm")
        for frame in ("{", b"\xff", json.dumps({"type": "voice_chunk", "ref": "r", "data": 1})):
            rogue = await server.client()
            await rogue.send_raw(frame)
            await rogue.ws.close()
            await rogue.close()
        await talker.collect()
        assert talker.done is not None and not talker.done["cancelled"]
