"""What the framework adapters add to time to first audio.

    python -m bench.integrations --url wss://127.0.0.1:8443/v1/stream --ca certs/ca.pem [--repeat 20]
    python -m bench.integrations --mock-engine [--repeat 20]      # a server of its own, with a scripted engine

For each adapter, the time from the framework's first text to its first
audio frame, measured in the same run, round-robin, beside the same text
spoken over protocol v1 directly with the Python client on a warm session:

* direct (whole): ``speak`` with the text (``final: true``) -> first ``audio`` out of ``Speech``.
* direct (streamed): ``speak`` opened with ``final: false``, the text, ``end`` -> first audio.
* Pipecat: an LLM turn (start, the text, end) queued into a running pipeline ->
  the first ``TTSAudioRawFrame`` at the pipeline's sink.
* LiveKit ``stream()``: ``push_text`` + ``end_input`` -> the first ``SynthesizedAudio``.
* LiveKit ``synthesize()``: the call -> the first ``SynthesizedAudio``.
* Wyoming ``synthesize``: connecting to the bridge (Home Assistant connects per
  request) -> the first ``audio-chunk``; the bridge runs as ``python -m server.wyoming``.
* Wyoming streaming: connect, ``synthesize-start``, the text as one
  ``synthesize-chunk``, ``synthesize-stop`` -> the first ``audio-chunk``.

Each adapter is compared with the direct mode it maps to (streamed for Pipecat,
LiveKit's stream and Wyoming's streaming; whole for the others): the ratio of
medians, and the median of the per-round differences (the adapter's cost in
ms). The server's engine time is in both, so the difference is what the
adapter and its framework add. Printed as Markdown (bench/RESULTS.md).

With a real engine on a busy CPU the engine's time and its spread dwarf the
adapters'; ``--mock-engine`` starts a server of its own on loopback (TLS,
the real app and protocol) whose engine is ``MockEngine``, which answers at
once, so what remains is the transports and the adapters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from client import Client, ssl_context

TEXT = "Hello there, this is a latency test. It has a second sentence."
DESIGN = "a clear, neutral voice"
Measure = Callable[[], Awaitable[float]]


# --- protocol v1 directly ----------------------------------------------------------


def direct(client: Client, *, streamed: bool) -> Measure:
    async def once() -> float:
        began = time.perf_counter()
        if streamed:
            speech = await client.speak("", design=DESIGN, final=False)
            await speech.send(TEXT)
            await speech.end()
        else:
            speech = await client.speak(TEXT, design=DESIGN)
        first = None
        async for _ in speech:
            first = first or time.perf_counter()
        assert first is not None, "no audio"
        return first - began

    return once


# --- Pipecat -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pipecat(url: str, ca: str | None, token: str | None) -> AsyncIterator[Measure]:
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.task import PipelineParams
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from client.integrations.pipecat import MineStreamTTSService

    class Sink(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.first: float | None = None
            self.stopped = asyncio.Event()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame) and self.first is None:
                self.first = time.perf_counter()
            elif isinstance(frame, TTSStoppedFrame):
                self.stopped.set()
            await self.push_frame(frame, direction)

    tts = MineStreamTTSService(url=url, token=token, ca=ca, settings=MineStreamTTSService.Settings(design=DESIGN))
    sink = Sink()
    worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=24000), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())

    async def once() -> float:
        sink.first, _ = None, sink.stopped.clear()
        began = time.perf_counter()
        await worker.queue_frames([LLMFullResponseStartFrame(), LLMTextFrame(TEXT), LLMFullResponseEndFrame()])
        await asyncio.wait_for(sink.stopped.wait(), 60)
        assert sink.first is not None, "no audio"
        return sink.first - began

    try:
        yield once
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 60)


# --- LiveKit -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def livekit(url: str, ca: str | None, token: str | None) -> AsyncIterator[tuple[Measure, Measure]]:
    from client.integrations import livekit as minestream

    tts = minestream.TTS(url=url, token=token, ca=ca, design=DESIGN)

    async def streamed() -> float:
        async with tts.stream() as stream:
            began = time.perf_counter()
            stream.push_text(TEXT)
            stream.end_input()
            return await _first_then_drain(stream, began)

    async def chunked() -> float:
        began = time.perf_counter()
        async with tts.synthesize(TEXT) as stream:
            return await _first_then_drain(stream, began)

    try:
        yield streamed, chunked
    finally:
        await tts.aclose()


async def _first_then_drain(stream: Any, began: float) -> float:
    first = None
    async for _ in stream:
        first = first or time.perf_counter()
    assert first is not None, "no audio"
    return first - began


# --- Wyoming -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def wyoming(url: str, ca: str | None, token: str | None) -> AsyncIterator[tuple[Measure, Measure]]:
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    port = _free_port()
    command = [sys.executable, "-m", "server.wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--url", url, "--log-level", "warning"]
    command += ["--ca", ca] if ca else []
    env = {**os.environ, **({"MINESTREAM_TOKEN": token} if token else {})}
    bridge = await asyncio.create_subprocess_exec(*command, env=env)

    async def request(events: list[Any], last: str) -> float:
        began = time.perf_counter()
        first = None
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for event in events:
                await client.write_event(event.event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 60)
                assert event is not None, "the bridge hung up"
                if event.type == "audio-chunk":
                    first = first or time.perf_counter()
                elif event.type in ("error",):
                    raise RuntimeError(f"the bridge answered {event.data}")
                if event.type == last:
                    break
        assert first is not None, "no audio"
        return first - began

    async def whole() -> float:
        return await request([Synthesize(text=TEXT)], "audio-stop")

    async def streamed() -> float:
        return await request([SynthesizeStart(), SynthesizeChunk(text=TEXT), SynthesizeStop()], "synthesize-stopped")

    try:
        await _wait_for_port(port, bridge)
        yield streamed, whole
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(bridge.wait(), 15)
        except asyncio.TimeoutError:
            bridge.kill()
            await bridge.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the Wyoming bridge exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("the Wyoming bridge did not start listening")


# --- a server with the scripted engine ------------------------------------------------


@contextlib.contextmanager
def mock_server(folder: Path) -> Any:
    """A MineStream server on loopback over TLS whose engine answers at once; yields (url, ca)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.integrations", "--serve-mock", str(port), str(folder)])
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the mock-engine server exited with {server.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the mock-engine server did not start listening")
            time.sleep(0.1)
        yield f"wss://127.0.0.1:{port}/v1/stream", str(folder / "certs" / "ca.pem")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def serve_mock(port: int, folder: Path) -> None:
    import uvicorn

    from server.app import create_app
    from server.config import Settings
    from server.engines.mock import MockEngine
    from server.tls import ensure_certificates

    settings = Settings(host="127.0.0.1", port=port, data_dir=folder / "data", certs_dir=folder / "certs")
    cert, key = ensure_certificates(settings.certs_dir)
    app = create_app(settings, engine=MockEngine())
    uvicorn.run(app, host="127.0.0.1", port=port, ssl_certfile=str(cert), ssl_keyfile=str(key), log_level="warning")


# --- the run -------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> str:
    context = ssl_context(args.ca, insecure=args.insecure) if args.url.startswith("wss:") else None
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client.connect(args.url, token=args.token, ssl=context))
        pipecat_once = await stack.enter_async_context(pipecat(args.url, args.ca, args.token))
        livekit_stream, livekit_whole = await stack.enter_async_context(livekit(args.url, args.ca, args.token))
        wyoming_stream, wyoming_whole = await stack.enter_async_context(wyoming(args.url, args.ca, args.token))
        measures: dict[str, Measure] = {
            "direct (whole)": direct(client, streamed=False),
            "direct (streamed)": direct(client, streamed=True),
            "Pipecat (LLM turn)": pipecat_once,
            "LiveKit stream()": livekit_stream,
            "LiveKit synthesize()": livekit_whole,
            "Wyoming synthesize": wyoming_whole,
            "Wyoming streaming": wyoming_stream,
        }
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for round_ in range(args.warmup + args.repeat):
            for name, once in measures.items():
                value = await once()
                if round_ >= args.warmup:
                    samples[name].append(value * 1000)
            if not args.quiet:
                print(f"round {round_ + 1}/{args.warmup + args.repeat}", file=sys.stderr)
    return table(samples, args.repeat)


BASELINE = {
    "Pipecat (LLM turn)": "direct (streamed)",
    "LiveKit stream()": "direct (streamed)",
    "LiveKit synthesize()": "direct (whole)",
    "Wyoming synthesize": "direct (whole)",
    "Wyoming streaming": "direct (streamed)",
}


def table(samples: dict[str, list[float]], repeat: int) -> str:
    lines = [
        f"{repeat} rounds, round-robin; text {TEXT!r}; time from the framework's first text to its first audio frame.",
        "",
        "| path | p50 ms | p90 ms | vs | ratio of p50s | adds (median of per-round differences) ms |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, values in samples.items():
        p50, p90 = statistics.median(values), _p90(values)
        base = BASELINE.get(name)
        if base is None:
            lines.append(f"| {name} | {p50:.1f} | {p90:.1f} | | | |")
            continue
        base_values = samples[base]
        ratio = p50 / statistics.median(base_values)
        added = statistics.median(a - b for a, b in zip(values, base_values, strict=True))
        lines.append(f"| {name} | {p50:.1f} | {p90:.1f} | {base} | {ratio:.2f} | {added:+.1f} |")
    return "\n".join(lines)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.integrations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="wss://localhost:8443/v1/stream", help="the server's socket (the only server contacted)")
    parser.add_argument("--ca", help="CA certificate (PEM), e.g. certs/ca.pem")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--token", default=os.environ.get("MINESTREAM_TOKEN"), help="the server's token (default $MINESTREAM_TOKEN)")
    parser.add_argument("--repeat", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds left out first (default 2)")
    parser.add_argument("--mock-engine", action="store_true", help="start a server of its own whose engine answers at once")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--serve-mock", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        serve_mock(int(args.serve_mock[0]), Path(args.serve_mock[1]))
        return
    if not args.mock_engine:
        print(asyncio.run(run(args)))
        return
    with tempfile.TemporaryDirectory() as folder, mock_server(Path(folder)) as (url, ca):
        args.url, args.ca, args.token = url, ca, None
        print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
