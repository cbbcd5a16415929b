"""The Pipecat TTS service against the real pipecat-ai package and the real server (preview engine, TLS, loopback).

Pipelines of text frames go into ``MineStreamTTSService``; a sink at the end
records every frame that comes out.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402 - after the skip
    EndFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.task import PipelineParams  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.tts_service import TextAggregationMode  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from client import Done  # noqa: E402
from client.integrations import pipecat_example  # noqa: E402
from client.integrations.pipecat import MineStreamTTSService  # noqa: E402
from tests.audio_checks import assert_speech  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402

BOUND_S = 60
LONG = " ".join(["This sentence is one of many, so the reply goes on for a long while."] * 12)


class Recorder(FrameProcessor):
    """Keeps every downstream frame, in order, and says when the first audio came."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.first_audio = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            if isinstance(frame, TTSAudioRawFrame):
                self.first_audio.set()
        await self.push_frame(frame, direction)

    def audio(self, context_id: str | None = None) -> list[TTSAudioRawFrame]:
        return [f for f in self.frames if isinstance(f, TTSAudioRawFrame) and context_id in (None, f.context_id)]


def service(server: LiveServer, **kwargs: object) -> tuple[MineStreamTTSService, list[Done]]:
    tts = MineStreamTTSService(url=server.ws_url, ssl=server.ssl_context(), **kwargs)  # type: ignore[arg-type]
    done: list[Done] = []

    @tts.event_handler("on_utterance_done")
    async def on_done(_: MineStreamTTSService, finished: Done) -> None:
        done.append(finished)

    return tts, done


@asynccontextmanager
async def running(tts: MineStreamTTSService, sample_rate: int = 24000) -> AsyncIterator[tuple[PipelineWorker, Recorder]]:
    """A pipeline of ``tts`` into a recorder, running until the block ends (then EndFrame, bounded)."""
    recorder = Recorder()
    worker = PipelineWorker(Pipeline([tts, recorder]), params=PipelineParams(audio_out_sample_rate=sample_rate), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        yield worker, recorder
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), BOUND_S)
    finally:
        if not run.done():
            await runner.cancel()
            await asyncio.wait_for(run, BOUND_S)


async def until(condition: object, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def pcm(frames: list[TTSAudioRawFrame]) -> np.ndarray:
    return np.frombuffer(b"".join(f.audio for f in frames), dtype="<i2").astype(np.float32) / 32768.0


async def test_the_example_pipeline_speaks_llm_tokens_with_sentences_timed_as_heard(server: LiveServer, tmp_path: Path) -> None:
    text = "Hello there, I am streaming. Each sentence is timed as it is heard."
    tts, done = service(server)
    sink = await asyncio.wait_for(pipecat_example.run(text, tmp_path / "out.wav", tts), BOUND_S)
    assert sink.sentences == ["Hello there, I am streaming.", "Each sentence is timed as it is heard."]
    assert sink.first_audio is not None
    await until(lambda: len(done) == 1, "the utterance's done")
    assert done[0].cancelled is False and done[0].ttfa_ms is not None
    with wave.open(str(tmp_path / "out.wav")) as wav:
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    assert_speech(audio, 24000, text)


async def test_text_frames_in_audio_frames_out_in_order(server: LiveServer) -> None:
    tts, done = service(server)
    async with running(tts) as (worker, recorder):
        await worker.queue_frames(pipecat_example.llm_turn("The first sentence is short. The second one is a little longer."))
        await until(lambda: any(isinstance(f, TTSStoppedFrame) for f in recorder.frames), "TTSStoppedFrame")
    kinds = [type(f).__name__ for f in recorder.frames if isinstance(f, (TTSStartedFrame, TTSAudioRawFrame, TTSTextFrame, TTSStoppedFrame))]
    assert kinds[0] == "TTSStartedFrame" and kinds[-1] == "TTSStoppedFrame" and "TTSAudioRawFrame" in kinds
    audio = recorder.audio()
    assert {f.sample_rate for f in audio} == {24000} and len({f.context_id for f in audio}) == 1
    assert audio[0].context_id == done[0].id and not done[0].cancelled
    words = [f for f in recorder.frames if isinstance(f, TTSTextFrame)]
    assert [w.text for w in words] == ["The first sentence is short.", "The second one is a little longer."]
    # Each sentence's time is where its audio starts: the second is one sentence of audio later.
    first_audio_s = len(pcm(audio)) / 24000
    assert words[0].pts is not None and words[1].pts is not None
    gap_s = (words[1].pts - words[0].pts) / 1e9
    assert 0.5 < gap_s < first_audio_s
    assert_speech(pcm(audio), 24000, "The first sentence is short. The second one is a little longer.")


async def test_an_interruption_cancels_the_utterance_on_the_server_and_its_audio_stops(server: LiveServer) -> None:
    tts, done = service(server)
    async with running(tts) as (worker, recorder):
        await worker.queue_frames(pipecat_example.llm_turn(LONG))
        await asyncio.wait_for(recorder.first_audio.wait(), BOUND_S)
        interrupted = recorder.audio()[0].context_id
        await worker.queue_frame(InterruptionFrame())
        await until(lambda: any(d.id == interrupted for d in done), "the interrupted utterance's done")
        assert next(d for d in done if d.id == interrupted).cancelled is True  # the server stopped generating
        # The session goes on: the next thing to say is spoken in a new utterance.
        recorder.first_audio.clear()
        await worker.queue_frame(TTSSpeakFrame("Still here."))
        await until(lambda: len(done) == 2, "the second utterance's done")
    after = recorder.frames[next(i for i, f in enumerate(recorder.frames) if isinstance(f, InterruptionFrame)) :]
    assert not [f for f in after if isinstance(f, TTSAudioRawFrame) and f.context_id == interrupted]
    heard_s = len(pcm(recorder.audio(interrupted))) / 24000
    assert heard_s < 0.06 * len(LONG)  # far less than the whole reply (~0.06 s per character)
    second = done[1]
    assert second.id != interrupted and not second.cancelled and recorder.audio(second.id)


async def test_sentence_mode_at_8_khz_is_resampled_and_spoken(server: LiveServer) -> None:
    text = "Telephone audio is eight kilohertz. It is resampled here."
    tts, done = service(server, text_aggregation_mode=TextAggregationMode.SENTENCE)
    async with running(tts, sample_rate=8000) as (worker, recorder):
        await worker.queue_frame(TTSSpeakFrame(text))
        await until(lambda: len(done) == 1, "the utterance's done")
        await until(lambda: any(isinstance(f, TTSStoppedFrame) for f in recorder.frames), "TTSStoppedFrame")
    audio = recorder.audio()
    assert {f.sample_rate for f in audio} == {8000}
    assert_speech(pcm(audio), 8000, text)


async def test_a_saved_voice_is_selectable_and_an_unknown_one_is_an_error_not_a_hang(server: LiveServer) -> None:
    with server.http() as http:
        saved = http.post("/v1/voices", json={"name": "Pipecat narrator", "design": "a warm narrator"}).json()
    try:
        tts, done = service(server, settings=MineStreamTTSService.Settings(voice=saved["id"]))
        async with running(tts) as (worker, recorder):
            await worker.queue_frame(TTSSpeakFrame("A saved voice speaks."))
            await until(lambda: len(done) == 1, "the utterance's done")
        assert not done[0].cancelled and recorder.audio()
    finally:
        with server.http() as http:
            http.delete(f"/v1/voices/{saved['id']}")
    tts, done = service(server, settings=MineStreamTTSService.Settings(voice="v_missing"))
    async with running(tts) as (worker, recorder):
        await worker.queue_frame(TTSSpeakFrame("Nobody has this voice."))
        await until(lambda: len(done) == 1, "the refused utterance's done")
    assert done[0].cancelled and not recorder.audio()


async def test_a_server_that_needs_a_token_gets_it_from_the_service(guarded_server: LiveServer) -> None:
    guarded = guarded_server
    tts, done = service(guarded, token=guarded.token)
    async with running(tts) as (worker, recorder):
        await worker.queue_frame(TTSSpeakFrame("With the token."))
        await until(lambda: len(done) == 1, "the utterance's done")
    assert not done[0].cancelled and recorder.audio() and tts.ready is not None
    refused, _ = service(guarded, token="wrong")
    failures: list[str] = []

    @refused.event_handler("on_connection_error")
    async def on_connection_error(_: MineStreamTTSService, error: str) -> None:
        failures.append(error)

    async with running(refused):
        await until(lambda: failures, "the refused connection's error")
    assert "unauthorized" in failures[0] and refused.ready is None


async def test_an_interruption_before_any_audio_still_ends_the_utterance_on_the_server(server: LiveServer) -> None:
    tts, done = service(server)
    requested: list[str] = []

    @tts.event_handler("on_tts_request")
    async def on_request(_: MineStreamTTSService, context_id: str, text: str) -> None:
        requested.append(context_id)

    async with running(tts) as (worker, recorder):
        await worker.queue_frames(pipecat_example.llm_turn(LONG))
        await until(lambda: requested, "the first text sent")
        await worker.queue_frame(InterruptionFrame())  # the server has heard nothing back yet
        await until(lambda: done, "the interrupted utterance's done")
    assert done[0].id == requested[0] and done[0].cancelled
