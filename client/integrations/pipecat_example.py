"""A runnable Pipecat pipeline with MineStream as its TTS:

    python -m client.integrations.pipecat_example "Hello there. This is Pipecat speaking." -o hello.wav
    python -m client.integrations.pipecat_example --design "a deep, calm pirate voice" --url wss://HOST:8443/v1/stream …

The text goes in as an LLM would send it (``LLMFullResponseStartFrame``, one
``LLMTextFrame`` per word, ``LLMFullResponseEndFrame``), through
``MineStreamTTSService``, into a sink that writes the audio frames to a WAV
file and prints each ``TTSTextFrame`` (a sentence, timed to when it is heard).
Swap the sink for a transport's output (Daily, WebRTC, a local speaker) and
the word source for an LLM to make it a voice agent. The server options are
the ``minestream`` command's (``--url``, ``--token-file``, ``--ca``...).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import wave
from pathlib import Path

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from ..cli import options
from .pipecat import MineStreamTTSService


class WavSink(FrameProcessor):
    """Writes the TTS audio to a WAV file and reports the timed text; passes every frame on."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.first_audio: float | None = None
        self.sentences: list[str] = []
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if self.first_audio is None:
                self.first_audio = time.perf_counter()
            self._wav.writeframes(frame.audio)
        elif isinstance(frame, TTSTextFrame):
            self.sentences.append(frame.text)
            print(f"  heard: {frame.text}", file=sys.stderr)
        await self.push_frame(frame, direction)

    def close(self) -> None:
        self._wav.close()


def llm_turn(text: str) -> list[Frame]:
    """The frames an LLM service sends for one reply, a word at a time."""
    words = [word + " " for word in text.split()]
    return [LLMFullResponseStartFrame(), *(LLMTextFrame(word) for word in words), LLMFullResponseEndFrame()]


async def run(text: str, output: Path, tts: MineStreamTTSService, sample_rate: int = 24000) -> WavSink:
    """Speak ``text`` through a pipeline of ``tts`` into ``output``; the sink says what was heard when."""
    sink = WavSink(output, sample_rate)
    worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=sample_rate), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    try:
        await worker.queue_frames([*llm_turn(text), EndFrame()])
        await runner.run()
    finally:
        sink.close()
    return sink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.integrations.pipecat_example", description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="what to say")
    parser.add_argument("-o", "--output", type=Path, default=Path("pipecat.wav"), help="the WAV file to write (default pipecat.wav)")
    parser.add_argument("--design", default="a clear, neutral voice", help="describe the voice")
    parser.add_argument("--voice-id", help="a saved voice's id instead (minestream voices)")
    parser.add_argument("--sample-rate", type=int, default=24000, help="the pipeline's output rate (default 24000)")
    options.add_server_options(parser, top=True)
    args = parser.parse_args(argv)
    settings = MineStreamTTSService.Settings(voice=args.voice_id, design=args.design)
    tts = MineStreamTTSService(url=args.url, token=options.token(args), ca=options.ca(args), insecure=args.insecure, settings=settings)
    sink = asyncio.run(run(args.text, args.output, tts, args.sample_rate))
    if sink.first_audio is None:
        print("error: no audio came back (see the log above)", file=sys.stderr)
        return 1
    print(f"first audio {1000 * (sink.first_audio - sink.started):.0f} ms after the pipeline started; "
          f"{len(sink.sentences)} sentences -> {args.output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
