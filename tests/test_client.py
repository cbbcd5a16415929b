"""The Python client's API: typed results, the error hierarchy, timeouts, the voice library, the sync wrapper.

Against the real server over TLS on loopback, except where the point is a
server that misbehaves (``tests.peers``).
"""

from __future__ import annotations

import asyncio
import io
import ssl
import threading
import wave
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from client import (
    BadRequest,
    CertificateError,
    Client,
    ConnectError,
    Disconnected,
    Done,
    EngineInfo,
    Flushed,
    Limits,
    MineStreamError,
    Progress,
    Ready,
    Segment,
    ServerError,
    Timeout,
    Timeouts,
    Unauthorized,
    Voice,
    VoiceLibrary,
    VoiceNotFound,
)
from client.sync import SyncClient
from server.tls import ensure_certificates
from tests.audio_checks import assert_speech
from tests.conftest import LiveServer, free_port
from tests.peers import READY, receive, scripted_server, send, silent_listener

SENTENCE = "The client's results are typed."
BOUND_S = 30
"""No test here may wait longer than this for an answer, so a hang fails instead of stalling the run."""


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, BOUND_S)


# --- typed results ----------------------------------------------------------


async def test_connect_is_a_context_manager_with_typed_ready(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file, sample_rate=16000) as client:
        ready = client.ready
        assert isinstance(ready, Ready) and isinstance(ready.engine, EngineInfo) and isinstance(ready.limits, Limits)
        assert ready.protocol == 1 and ready.session.startswith("s_") and ready.sample_rate == client.sample_rate == 16000
        assert ready.engine.kind == "preview" and ready.engine.design and ready.limits.max_text_chars > 0
        assert ready["engine"]["name"] == ready.engine.name  # the raw message stays reachable
        speech = await client.say(SENTENCE, design="calm")
    assert client.closed
    assert isinstance(speech.done, Done) and speech.done.cancelled is False and speech.done.id == speech.id
    assert abs(speech.done.audio_ms - len(speech.pcm()) / 16) < 20
    assert speech.done.ttfa_ms is not None and speech.ttfa_ms is not None and speech.done.rtf is not None
    assert_speech(speech.pcm(), 16000, SENTENCE)
    with wave.open(io.BytesIO(speech.wav())) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16000, 1, len(speech.pcm()))


async def test_await_connect_still_works(server: LiveServer) -> None:
    client = await Client.connect(server.ws_url, ssl=server.ssl_context())
    try:
        assert (await client.ping("x")).t == "x"
    finally:
        await client.close()


async def test_refused_speak_raises_its_code_and_the_session_goes_on(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        with pytest.raises(VoiceNotFound) as caught:
            await bounded(client.say("Hello.", voice_id="v_nope"))
        assert caught.value.code == "voice_not_found" and not caught.value.fatal and caught.value.id is not None
        speech = await client.say("Still here.", design="calm")
        assert speech.done is not None and not speech.done.cancelled


# --- flush and segment timing (additions to v1) ----------------------------------


async def test_segments_name_the_text_each_piece_speaks_and_where_its_audio_starts(server: LiveServer) -> None:
    text = "The first sentence is here. And the second one follows it."
    async with Client.connect(server.ws_url, ca=server.ca_file, segments=True) as client:
        speech = await client.speak(text, design="calm")
        audio_before: list[int] = []  # bytes of audio received before each segment
        received = 0
        async for event in bounded_events(speech):
            if isinstance(event, Segment):
                audio_before.append(received)
            elif not isinstance(event, Flushed):
                received += len(event.data)
    segments = speech.segments
    assert [s.index for s in segments] == list(range(len(segments))) and len(segments) >= 2
    assert all(text[s.text_start : s.text_end] == s.text for s in segments)
    assert " ".join(s.text for s in segments) == text  # every piece, in order, nothing lost
    # audio_ms is where the piece's audio starts: the audio that came before it (16-bit at 24 kHz).
    assert [round(s.audio_ms) for s in segments] == [round(n / 48) for n in audio_before]
    assert audio_before[0] == 0 and audio_before[-1] > 0


async def test_no_segments_unless_asked(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        speech = await client.speak("One sentence. Two sentences.", design="calm")
        kinds = {type(event).__name__ async for event in bounded_events(speech)}
    assert kinds == {"AudioChunk"} and speech.segments == []


async def test_flush_speaks_what_is_buffered_and_returns_after_its_audio(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file, segments=True) as client:
        speech = await client.speak("", design="calm", final=False)
        await speech.send("no sentence end yet")
        # Nobody iterates while flush waits: the reader answers it.
        assert await bounded(speech.flush()) is True
        before_flushed = []
        async for event in bounded_events(speech):
            if isinstance(event, Flushed):
                break
            before_flushed.append(type(event).__name__)
        assert before_flushed[0] == "Segment" and set(before_flushed[1:]) == {"AudioChunk"}
        assert speech.segments[0].text == "no sentence end yet"
        await speech.send(" and then more.")
        await speech.end()
        await bounded(speech.collect())
    assert speech.done is not None and not speech.done.cancelled
    assert [s.text for s in speech.segments] == ["no sentence end yet", "and then more."]
    assert speech.segments[1].text_start == len("no sentence end yet ")


async def test_flush_of_a_cancelled_utterance_returns_false(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        speech = await client.speak("", design="calm", final=False)
        await speech.send("words with no sentence end, so nothing is spoken yet")
        await speech.cancel()  # before flush: the server ends it, so the flush is never answered
        assert await bounded(speech.flush()) is False
        await bounded(speech.collect())
        assert speech.done is not None and speech.done.cancelled and speech.chunks == []
        assert await bounded(speech.flush()) is False  # over: answered at once, nothing sent


async def bounded_events(speech: Any) -> Any:
    """``speech.events()`` with the test's bound on the whole."""
    async with asyncio.timeout(BOUND_S):
        async for event in speech.events():
            yield event


# --- connecting: each failure is its own error --------------------------------


async def test_an_error_before_ready_fails_connect(server: LiveServer) -> None:
    with pytest.raises(BadRequest) as caught:
        await bounded(Client.connect(server.ws_url, ca=server.ca_file, sample_rate=8000))
    assert caught.value.code == "bad_message" and "sample_rate" in caught.value.message


async def test_missing_token_is_unauthorized_on_the_socket_and_over_http(guarded_server: LiveServer) -> None:
    live = guarded_server
    with pytest.raises(Unauthorized) as caught:
        await bounded(Client.connect(live.ws_url, ca=live.ca_file))
    assert caught.value.fatal
    async with VoiceLibrary.at(live.ws_url, ca=live.ca_file) as library:
        with pytest.raises(Unauthorized) as http_caught:
            await library.list()
    assert http_caught.value.status == 401
    async with Client.connect(live.ws_url, ca=live.ca_file, token=live.token) as client:
        assert await client.voices.list() == []


async def test_server_down_is_a_connect_error() -> None:
    url = f"wss://127.0.0.1:{free_port()}/v1/stream"
    with pytest.raises(ConnectError) as caught:
        await bounded(Client.connect(url))
    assert "refused" in str(caught.value) and isinstance(caught.value, OSError)
    with pytest.raises(ConnectError):
        await VoiceLibrary.at(url).list()


async def test_untrusted_certificate_is_a_certificate_error(server: LiveServer, tmp_path: Path) -> None:
    ensure_certificates(tmp_path / "other")
    stranger = tmp_path / "other" / "ca.pem"
    with pytest.raises(CertificateError) as caught:
        await bounded(Client.connect(server.ws_url, ca=stranger))
    assert isinstance(caught.value, ssl.SSLCertVerificationError) and "did not verify" in str(caught.value)
    async with VoiceLibrary.at(server.ws_url, ca=stranger) as library:
        with pytest.raises(CertificateError):
            await library.list()
    async with Client.connect(server.ws_url, ca=stranger, insecure=True) as client:
        assert client.ready.protocol == 1


# --- timeouts --------------------------------------------------------------------


async def test_connect_times_out_on_a_listener_that_never_answers() -> None:
    with silent_listener() as port, pytest.raises(Timeout) as caught:
        await bounded(Client.connect(f"wss://127.0.0.1:{port}/v1/stream", timeouts=Timeouts(connect=0.5)))
    assert caught.value.stage == "connect" and isinstance(caught.value, TimeoutError)


async def test_ready_times_out_when_hello_is_not_answered() -> None:
    hellos: list[dict[str, Any]] = []

    async def mute(ws: ServerConnection) -> None:
        hellos.append(await receive(ws))
        await ws.wait_closed()

    async with scripted_server(mute) as url:
        with pytest.raises(Timeout) as caught:
            await bounded(Client.connect(url, timeouts=Timeouts(ready=0.5)))
    assert caught.value.stage == "ready" and hellos[0]["type"] == "hello"


async def test_first_audio_times_out_and_cancels_the_utterance() -> None:
    received: list[dict[str, Any]] = []
    cancelled = asyncio.Event()

    async def record(ws: ServerConnection) -> None:
        await receive(ws)
        await send(ws, READY)
        for _ in range(10):
            message = await receive(ws)
            received.append(message)
            if message["type"] == "ping":
                await send(ws, {"type": "pong", "t": message.get("t")})
            if message["type"] == "cancel":
                cancelled.set()
                break
        await ws.wait_closed()

    async with scripted_server(record) as url, Client.connect(url, timeouts=Timeouts(first_audio=0.5)) as client:
        speech = await client.speak("Nobody answers this.", design="calm")
        with pytest.raises(Timeout) as caught:
            await bounded(speech.collect())
        await bounded(cancelled.wait())
    assert caught.value.stage == "first_audio"
    assert [m["type"] for m in received] == ["speak", "cancel"] and received[1]["id"] == speech.id


async def test_a_cancel_right_after_speak_is_not_lost(server: LiveServer) -> None:
    """A cancel the server reads before the utterance's task has first run still ends it (it once was lost)."""
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        for n in range(12):  # more than max_open_utterances: a lost cancel would leave its id open
            speech = await client.speak("", design="calm", final=False, id=f"quick{n}")
            await speech.cancel()
            await bounded(speech.collect())
            assert speech.done is not None and speech.done.cancelled
        assert (await bounded(client.say("Still room for more.", design="calm"))).done is not None


async def test_idle_timeout_once_audio_has_started() -> None:
    async def one_chunk_then_silence(ws: ServerConnection) -> None:
        await receive(ws)
        await send(ws, READY)
        speak = await receive(ws)
        await send(ws, {"type": "audio", "id": speak["id"], "seq": 0, "data": b"\x00\x01" * 480})
        await ws.wait_closed()

    async with scripted_server(one_chunk_then_silence) as url, Client.connect(url, timeouts=Timeouts(idle=0.5)) as client:
        speech = await client.speak("Half an answer.", design="calm")
        with pytest.raises(Timeout) as caught:
            await bounded(speech.collect())
    assert caught.value.stage == "idle" and len(speech.chunks) == 1


async def test_an_upgrade_refused_with_401_is_unauthorized() -> None:
    async def never(ws: ServerConnection) -> None:
        raise AssertionError("the upgrade was refused")

    async with scripted_server(never, refuse_with=HTTPStatus.UNAUTHORIZED) as url:
        with pytest.raises(Unauthorized) as caught:
            await bounded(Client.connect(url))
    assert caught.value.status == 401


async def test_overall_timeout_of_collect() -> None:
    async def stall(ws: ServerConnection) -> None:
        await receive(ws)
        await send(ws, READY)
        await ws.wait_closed()

    async with scripted_server(stall) as url, Client.connect(url) as client:
        speech = await client.speak("Slow.", design="calm")
        with pytest.raises(Timeout) as caught:
            await bounded(speech.collect(timeout=0.5))
    assert caught.value.stage == "overall"


# --- the router: unknown message types are ignored; a closed socket ends waits ----


async def test_unknown_message_types_are_ignored() -> None:
    pcm = b"\x10\x00" * 2400

    async def newer_server(ws: ServerConnection) -> None:
        await receive(ws)
        await send(ws, {"type": "notice", "text": "a session-level type v1 does not have"})
        await send(ws, {**READY, "new_field": 7})
        speak = await receive(ws)
        uid = speak["id"]
        await send(ws, {"type": "segment", "id": uid, "index": 0, "start": 0, "end": 5, "audio_ms": 0})
        await send(ws, {"type": "audio", "id": uid, "seq": 0, "data": pcm})
        await send(ws, {"type": "flushed", "id": uid})
        await send(ws, {"type": "done", "id": uid, "cancelled": False, "audio_ms": 100, "ttfa_ms": 5, "rtf": 0.1, "extra": True})
        await ws.wait_closed()

    async with scripted_server(newer_server) as url, Client.connect(url) as client:
        speech = await bounded(client.say("Hello.", design="calm"))
        assert client.ready["new_field"] == 7 and client.errors == [] and client.stray == []
    assert [c.data for c in speech.chunks] == [pcm]
    assert speech.done is not None and speech.done.audio_ms == 100 and speech.done["extra"] is True


async def test_a_connection_closed_mid_utterance_raises_disconnected() -> None:
    async def hang_up(ws: ServerConnection) -> None:
        await receive(ws)
        await send(ws, READY)
        await receive(ws)
        await ws.close(code=1011, reason="gone")

    async with scripted_server(hang_up) as url, Client.connect(url) as client:
        speech = await client.speak("Hello.", design="calm")
        with pytest.raises(Disconnected) as caught:
            await bounded(speech.collect())
    assert caught.value.code == "closed" and caught.value.close_code == 1011 and isinstance(caught.value, ServerError)


# --- the voice library ------------------------------------------------------------


async def test_voice_library_over_http(server: LiveServer, speech_wav: Path) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        library = client.voices
        cloned = await library.clone(speech_wav, name="lib-http", ref_text="The birch canoe slid on the smooth planks.")
        try:
            assert isinstance(cloned, Voice) and cloned.kind == "clone" and cloned.has_audio and cloned.duration_ms > 1000
            assert cloned.id in [v.id for v in await library.list()]
            assert (await library.find("lib-http")).id == cloned.id
            renamed = await library.rename(cloned.id, "lib-http renamed")
            assert renamed.name == "lib-http renamed" and (await library.get(cloned.id)).name == renamed.name
            with wave.open(io.BytesIO(await library.audio(cloned.id))) as wav:
                assert wav.getframerate() == 24000
            speech = await client.say(SENTENCE, voice_id=cloned.id)
            assert_speech(speech.pcm(), 24000, SENTENCE)
        finally:
            await library.delete(cloned.id)
        with pytest.raises(VoiceNotFound) as caught:
            await library.get(cloned.id)
        assert caught.value.status == 404
        with pytest.raises(VoiceNotFound):
            await library.find("lib-http renamed")


async def test_clone_over_the_socket_reports_progress(server: LiveServer, speech_wav: Path) -> None:
    progress: list[Progress] = []
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        voice = await client.clone(speech_wav, ref_text="The birch canoe slid on the smooth planks.", on_progress=progress.append)
        try:
            assert isinstance(voice, Voice) and voice.name == speech_wav.stem and voice.duration_ms > 1000
            assert voice["voice_id"] == voice.id  # the socket's field name, raw
            assert progress and all(isinstance(p, Progress) for p in progress)
            assert [p.decoded_ms for p in progress] == sorted(p.decoded_ms for p in progress)
            assert (await client.voices.get(voice.id)).kind == "clone"
        finally:
            await client.voices.delete(voice.id)


async def test_unusable_recording_is_unsupported_audio(server: LiveServer) -> None:
    async with Client.connect(server.ws_url, ca=server.ca_file) as client:
        with pytest.raises(ServerError) as caught:
            await bounded(client.upload_voice(b"not audio" * 200, name="junk"))
        assert caught.value.code == "unsupported_audio" and isinstance(caught.value, MineStreamError)
        with pytest.raises(ServerError) as http_caught:
            await client.voices.clone(b"not audio" * 200, name="junk")
        assert http_caught.value.code == "unsupported_audio" and http_caught.value.status == 415


# --- the sync wrapper ----------------------------------------------------------------


def test_sync_client(server: LiveServer, speech_wav: Path) -> None:
    before = threading.active_count()
    with SyncClient(server.ws_url, ca=server.ca_file) as tts:
        assert tts.ready.engine.kind == "preview"
        speech = tts.say(SENTENCE, design="a warm narrator")
        assert_speech(speech.pcm(), tts.sample_rate, SENTENCE)
        voice = tts.clone(speech_wav, name="sync-voice")
        try:
            assert tts.voice("sync-voice").id == voice.id
            assert tts.rename(voice.id, "sync-renamed").name == "sync-renamed"
            assert "sync-renamed" in [v.name for v in tts.voices()]
        finally:
            tts.delete(voice.id)
        with pytest.raises(VoiceNotFound):
            tts.voice(voice.id)
    assert threading.active_count() <= before


def test_sync_client_raises_the_connect_error() -> None:
    before = threading.active_count()
    with pytest.raises(ConnectError):
        SyncClient(f"wss://127.0.0.1:{free_port()}/v1/stream")
    assert threading.active_count() <= before
