"""The real server over TLS on loopback, with the real client: the happy paths."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from client import Client
from tests.audio_checks import assert_speech
from tests.conftest import LiveServer

SENTENCE = "The quick brown fox jumps over the lazy dog."


async def test_hello_is_answered_with_ready(server: LiveServer) -> None:
    async with await server.client(format="pcm_f32le", sample_rate=48000) as client:
        ready = client.ready
    assert ready["protocol"] == 1 and ready["session"].startswith("s_")
    assert ready["format"] == "pcm_f32le" and ready["sample_rate"] == 48000
    engine = ready["engine"]
    assert engine["kind"] == "preview" and engine["design"] and engine["clone"] and "approximates" in engine["note"]
    assert {"max_text_chars", "max_ref_seconds", "max_open_utterances", "max_message_bytes"} <= set(ready["limits"])


async def test_design_speak_streams_speech(server: LiveServer) -> None:
    async with await server.client() as client:
        speech = await client.say(SENTENCE, design="a deep, calm pirate voice")
    assert_speech(speech.pcm(), 24000, SENTENCE)
    assert [chunk.seq for chunk in speech.chunks] == list(range(len(speech.chunks)))
    done = speech.done
    assert done is not None and done["cancelled"] is False
    assert abs(done["audio_ms"] - len(speech.pcm()) / 24) <= 1
    assert 0 < done["ttfa_ms"] < 5000 and 0 < done["rtf"] < 1


async def test_json_encoding_and_other_rates_and_formats(server: LiveServer) -> None:
    async with await server.client(encoding="json", format="pcm_f32le", sample_rate=16000) as client:
        speech = await client.say(SENTENCE, design="a bright young voice")
    pcm = speech.pcm()
    assert_speech(pcm, 16000, SENTENCE)
    assert speech.done is not None and abs(speech.done["audio_ms"] - len(pcm) / 16) < 20


async def test_design_words_change_the_voice(server: LiveServer) -> None:
    from server.engines.prosody import median_pitch

    async with await server.client() as client:
        deep = (await client.say(SENTENCE, design="a very deep voice")).pcm()
        high = (await client.say(SENTENCE, design="a high squeaky child")).pcm()
    assert median_pitch(high, 24000) > 1.3 * median_pitch(deep, 24000)


async def test_clone_uploaded_recording_and_speak_with_it(server: LiveServer, speech_wav) -> None:
    async with await server.client() as client:
        voice = await client.upload_voice(speech_wav.read_bytes(), name="espeak", ref_text="The birch canoe", mime="audio/wav")
        assert voice["voice_id"].startswith("v_") and voice["name"] == "espeak" and voice["duration_ms"] > 3000
        speech = await client.say(SENTENCE, voice_id=voice["voice_id"])
    assert_speech(speech.pcm(), 24000, SENTENCE)
    with server.http() as http:
        assert http.delete(f"/v1/voices/{voice['voice_id']}").status_code == 204


async def test_two_utterances_interleave_on_one_socket(server: LiveServer) -> None:
    text = "First sentence here. A second one follows. And a third to finish."
    async with await server.client() as client:
        a = await client.speak(text, design="calm")
        b = await client.speak(text, design="energetic")
        await asyncio.gather(a.collect(), b.collect())
    for speech in (a, b):
        assert_speech(speech.pcm(), 24000, text)
        assert [c.seq for c in speech.chunks] == list(range(len(speech.chunks)))
    # b's audio began before a's ended: they were generated side by side.
    assert b.chunks[0].received < a.chunks[-1].received


async def test_cancel_mid_stream_ends_audio_at_once(server: LiveServer) -> None:
    long_text = " ".join(["This sentence is one of many in a long passage."] * 12)
    async with await server.client() as client:
        speech = await client.speak(long_text, design="calm")
        async for _ in speech:
            await speech.cancel()
            break
        await speech.collect()
        assert speech.done is not None and speech.done["cancelled"] is True
        assert speech.done["audio_ms"] < 20000
        # Anything still in flight for that id would arrive before this reply.
        after = await client.say("Still here.", design="calm")
        await client.ping()
    assert after.done is not None and not after.done["cancelled"]
    assert not [m for m in client.stray if m["id"] == speech.id]


async def test_text_streams_in_and_is_spoken_sentence_by_sentence(server: LiveServer) -> None:
    async with await server.client() as client:
        speech = await client.speak("", design="warm narrator", final=False)
        for word in ["Hello", "there,", "this", "is", "the", "first", "sentence.", ""]:
            await speech.send(word + " ")
        chunks = speech.__aiter__()
        first = await chunks.__anext__()  # audio before the text is over
        for word in ["And", "this", "second", "sentence", "comes", "later"]:
            await speech.send(word + " ")
        await speech.end()
        async for _ in chunks:
            pass
    assert first.seq == 0 and speech.done is not None and not speech.done["cancelled"]
    assert_speech(speech.pcm(), 24000, "Hello there, this is the first sentence. And this second sentence comes later")


async def test_ping_pong(server: LiveServer) -> None:
    async with await server.client() as client:
        assert (await client.ping(42))["t"] == 42


async def test_disconnect_mid_stream_frees_the_session(server: LiveServer) -> None:
    long_text = " ".join(["A sentence to keep the engine busy for a while."] * 10)
    client = await server.client()
    speech = await client.speak(long_text, design="calm")
    async for _ in speech:
        break
    await client.ws.close()
    await client.close()
    async with await server.client() as other:
        assert_speech((await other.say(SENTENCE, design="calm")).pcm(), 24000, SENTENCE)
    for _ in range(50):
        with server.http() as http:
            if http.get("/healthz").json()["sessions"] == 0:
                break
        await asyncio.sleep(0.1)
    with server.http() as http:
        health = http.get("/healthz").json()
        metrics = http.get("/metrics").text
    assert health["sessions"] == 0
    assert "minestream_active_utterances 0.0" in metrics


async def test_many_sessions_at_once_each_get_their_audio(server: LiveServer) -> None:
    async def one(index: int) -> np.ndarray:
        async with await server.client() as client:
            return (await client.say(f"Session number {index} says hello.", design="calm")).pcm()

    results = await asyncio.gather(*(one(i) for i in range(6)))
    for index, pcm in enumerate(results):
        assert_speech(pcm, 24000, f"Session number {index} says hello.")


async def test_healthz_reports_engine(server: LiveServer) -> None:
    with server.http() as http:
        body = http.get("/healthz").json()
    assert body["status"] == "ok" and body["engine"]["kind"] == "preview"
    assert json.dumps(body)


def test_page_is_served(server: LiveServer) -> None:
    with server.http() as http:
        page = http.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


async def test_client_connect_rejects_untrusted_certificate(server: LiveServer) -> None:
    import ssl

    import pytest

    with pytest.raises(ssl.SSLCertVerificationError):
        await Client.connect(server.ws_url, ssl=ssl.create_default_context())
