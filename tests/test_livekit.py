"""The LiveKit Agents TTS plugin against the real livekit-agents package and the real server (preview engine, TLS, loopback)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

pytest.importorskip("livekit.agents")

from livekit import rtc  # noqa: E402 - after the skip
from livekit.agents import APIError  # noqa: E402
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString  # noqa: E402

from client.integrations import livekit as minestream  # noqa: E402
from tests.audio_checks import assert_speech  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402

BOUND_S = 60
LONG = " ".join(["This sentence is one of many, so the reply goes on for a long while."] * 12)


def plugin(server: LiveServer, **kwargs: Any) -> minestream.TTS:
    return minestream.TTS(url=server.ws_url, ssl=server.ssl_context(), **kwargs)


def pcm(frames: list[rtc.AudioFrame]) -> np.ndarray:
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames]).astype(np.float32) / 32768.0


def timed(frames: list[rtc.AudioFrame]) -> list[TimedString]:
    return [text for f in frames for text in f.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]


async def test_a_stream_pushed_token_by_token_gives_audio_with_timed_transcripts_and_ends_on_end_input(server: LiveServer) -> None:
    text = "Tokens arrive one by one, as an LLM writes them. The server finds the sentences."
    tts = plugin(server)
    assert tts.capabilities.streaming and tts.capabilities.aligned_transcript
    try:
        async with tts.stream() as stream:
            for word in text.split(" "):
                stream.push_text(word + " ")
                await asyncio.sleep(0.01)  # an LLM's pace: the text really arrives over time
            stream.end_input()
            events = [event async for event in bounded(stream)]  # ends on its own after end_input
    finally:
        await tts.aclose()
    frames = [event.frame for event in events]
    assert {f.sample_rate for f in frames} == {24000} and {f.num_channels for f in frames} == {1}
    assert events[-1].is_final and not any(event.is_final for event in events[:-1])
    assert len({event.segment_id for event in events}) == 1 and events[0].segment_id == stream.speech.id  # type: ignore[union-attr]
    transcript = timed(frames)
    assert "".join(transcript) == text  # every word, spaces between sentences kept
    starts = [t.start_time for t in transcript]
    assert len(starts) >= 2 and starts[0] == 0.0 and starts == sorted(starts) and starts[1] > 0.5
    assert starts[-1] < len(pcm(frames)) / 24000  # the last sentence starts inside the audio
    assert_speech(pcm(frames), 24000, text)
    assert stream.speech is not None and stream.speech.done is not None and not stream.speech.done.cancelled


async def test_flush_speaks_the_text_so_far_before_end_input(server: LiveServer) -> None:
    tts = plugin(server)
    try:
        async with tts.stream() as stream:
            stream.push_text("no sentence end ")
            stream.push_text("here yet")
            stream.flush()
            first = await asyncio.wait_for(stream.__anext__(), BOUND_S)  # audio before end_input: the flush did it
            stream.end_input()
            rest = [event async for event in bounded(stream)]
    finally:
        await tts.aclose()
    frames = [first.frame, *(event.frame for event in rest)]
    assert "".join(timed(frames)) == "no sentence end here yet"
    assert_speech(pcm(frames), 24000, "no sentence end here yet")


async def test_synthesize_is_one_chunked_utterance(server: LiveServer) -> None:
    text = "Chunked synthesis speaks the whole text at once."
    tts = plugin(server, sample_rate=16000)
    try:
        async with tts.synthesize(text) as chunked:
            frames = [event.frame async for event in bounded(chunked)]
    finally:
        await tts.aclose()
    assert {f.sample_rate for f in frames} == {16000}
    assert "".join(timed(frames)) == text
    assert_speech(pcm(frames), 16000, text)


async def test_closing_a_stream_cancels_its_utterance_and_the_session_is_reused(server: LiveServer) -> None:
    tts = plugin(server)
    try:
        stream = tts.stream()
        stream.push_text(LONG)
        await asyncio.wait_for(stream.__anext__(), BOUND_S)
        await stream.aclose()  # what an interruption does
        speech = stream.speech
        assert speech is not None
        await asyncio.wait_for(speech.collect(), BOUND_S)  # the rest of its messages, up to done
        assert speech.done is not None and speech.done.cancelled  # the server stopped it
        assert speech.audio_seconds < 0.06 * len(LONG)
        session = speech.client
        async with tts.synthesize("Next reply.") as chunked:
            frames = [event.frame async for event in bounded(chunked)]
        assert frames and chunked.speech is not None and chunked.speech.client is session  # no new handshake
    finally:
        await tts.aclose()


async def test_an_unknown_voice_is_an_api_error_that_is_not_retried(server: LiveServer) -> None:
    tts = plugin(server, voice_id="v_missing")
    errors: list[Any] = []
    tts.on("error", errors.append)
    try:
        with pytest.raises(APIError) as caught:
            async with tts.synthesize("Nobody has this voice.") as chunked:
                async for _ in bounded(chunked):
                    pass
    finally:
        await tts.aclose()
    assert "voice_not_found" in str(caught.value) and not caught.value.retryable
    assert len(errors) == 1 and not errors[0].recoverable


async def bounded(stream: Any) -> Any:
    async with asyncio.timeout(BOUND_S):
        async for event in stream:
            yield event


async def test_utterances_beyond_a_sessions_limit_open_another_session(server_factory: Any) -> None:
    small = server_factory("--max-open-utterances", "1")
    tts = plugin(small)
    try:
        first, second = tts.stream(), tts.stream()
        first.push_text(LONG)
        await asyncio.wait_for(first.__anext__(), BOUND_S)  # the first session is now full
        async with tts.synthesize("Meanwhile, another reply.") as chunked:
            frames = [event.frame async for event in bounded(chunked)]
        assert frames and first.speech is not None and chunked.speech is not None
        assert chunked.speech.client is not first.speech.client and len(tts.pool.sessions) == 2
        await first.aclose()
        await second.aclose()
    finally:
        await tts.aclose()
    assert tts.pool.sessions == []


def test_update_options_changes_the_voice_of_later_utterances(server: LiveServer) -> None:
    tts = minestream.TTS(url=server.ws_url, voice_id="v_saved")
    assert tts.options.speak_options() == {"voice_id": "v_saved", "language": "auto"}
    tts.update_options(design="a calm voice", language="en")
    assert tts.options.speak_options() == {"design": "a calm voice", "language": "en"}
    tts.update_options(voice_id="v_other")
    assert tts.options.speak_options() == {"voice_id": "v_other", "language": "en"}


async def test_a_stream_ended_without_text_ends_quietly(server: LiveServer) -> None:
    tts = plugin(server)
    try:
        async with tts.stream() as stream:
            stream.end_input()
            assert [event async for event in bounded(stream)] == []
        assert stream.speech is None  # nothing was spoken on the server
    finally:
        await tts.aclose()
