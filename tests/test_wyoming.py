"""``python -m server.wyoming`` against the real wyoming package's own client and the real server (preview, TLS, loopback).

The bridge runs as a subprocess, as Home Assistant would find it, in front of
the shared preview server; zeroconf stays off (announcing sends multicast).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wyoming")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402 - after the skip
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice  # noqa: E402

from server.wyoming import ZEROCONF_TYPE, service_info  # noqa: E402
from tests.audio_checks import assert_speech  # noqa: E402
from tests.conftest import ROOT, LiveServer, free_port  # noqa: E402

BOUND_S = 60


@pytest.fixture(scope="module")
def saved_voice(server: LiveServer) -> Iterator[dict[str, str]]:
    with server.http() as http:
        voice = http.post("/v1/voices", json={"name": "Kitchen", "design": "a cheerful host"}).json()
    yield voice
    with server.http() as http:
        http.delete(f"/v1/voices/{voice['id']}")


@pytest.fixture(scope="module")
def bridge(server: LiveServer, saved_voice: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The Wyoming port of a bridge to the shared server."""
    port = free_port()
    log = tmp_path_factory.mktemp("wyoming") / "bridge.log"
    command = [sys.executable, "-m", "server.wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--url", server.ws_url,
               "--ca", str(server.ca_file), "--log-level", "warning"]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the bridge exited with {process.returncode}:\n{log.read_text()}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the bridge did not listen on {port}:\n{log.read_text()}")


async def events_until(client: AsyncTcpClient, last: str) -> list[Event]:
    """Events up to and including the first of type ``last`` (bounded)."""
    events: list[Event] = []
    async with asyncio.timeout(BOUND_S):
        while not events or events[-1].type != last:
            event = await client.read_event()
            assert event is not None, f"the bridge closed the connection after {[e.type for e in events]}"
            events.append(event)
    return events


def pcm(events: list[Event]) -> np.ndarray:
    data = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


async def test_describe_lists_the_designed_and_saved_voices_with_streaming(bridge: int, saved_voice: dict[str, str]) -> None:
    async with AsyncTcpClient("127.0.0.1", bridge) as client:
        await client.write_event(Describe().event())
        info = Info.from_event((await events_until(client, "info"))[-1])
    (program,) = info.tts
    assert program.name == "minestream" and program.installed and program.supports_synthesize_streaming
    voices = {voice.name: voice for voice in program.voices}
    assert "design" in voices and voices[saved_voice["id"]].description == "Kitchen"
    assert all(voice.languages == ["en"] for voice in program.voices)  # what the preview engine speaks


async def test_synthesize_is_answered_with_one_stream_of_audio(bridge: int) -> None:
    text = "Home Assistant asked for this sentence."
    async with AsyncTcpClient("127.0.0.1", bridge) as client:
        await client.write_event(Synthesize(text=text).event())
        events = await events_until(client, "audio-stop")
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and set(kinds[1:-1]) == {"audio-chunk"}
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert_speech(pcm(events), 24000, text)


async def test_a_saved_voice_is_chosen_by_id_or_by_name(bridge: int, saved_voice: dict[str, str]) -> None:
    for name in (saved_voice["id"], "Kitchen"):
        async with AsyncTcpClient("127.0.0.1", bridge) as client:
            await client.write_event(Synthesize(text="In the saved voice.", voice=SynthesizeVoice(name=name)).event())
            events = await events_until(client, "audio-stop")
        assert len(pcm(events)) > 0


async def test_streaming_events_get_each_sentence_as_it_is_generated(bridge: int) -> None:
    first, second = "The first sentence streams in.", "The second follows it."
    async with AsyncTcpClient("127.0.0.1", bridge) as client:
        await client.write_event(SynthesizeStart().event())
        for word in f"{first} ".split(" "):
            await client.write_event(SynthesizeChunk(text=word + " ").event())
        # The first sentence is heard while the text is still open: no stop has been sent.
        early = await events_until(client, "audio-chunk")
        for word in second.split(" "):
            await client.write_event(SynthesizeChunk(text=word + " ").event())
        await client.write_event(Synthesize(text=f"{first} {second}").event())  # Home Assistant's copy for old servers
        await client.write_event(SynthesizeStop().event())
        events = early + await events_until(client, "synthesize-stopped")
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    # A start ... stop per sentence, nothing between them but audio; the copy is not spoken again.
    pieces = [piece.strip() for piece in " ".join(kinds[:-1]).split("audio-stop") if piece.strip()]
    assert len(pieces) == 2 and all(piece.startswith("audio-start") and "audio-start" not in piece[11:] for piece in pieces)
    stop = kinds.index("audio-stop")
    assert_speech(pcm(events[:stop]), 24000, first)
    assert_speech(pcm(events[stop:]), 24000, second)


async def test_an_unknown_voice_is_an_error_event_and_a_stream_still_stops(bridge: int) -> None:
    voice = SynthesizeVoice(name="v_nobody")
    async with AsyncTcpClient("127.0.0.1", bridge) as client:
        await client.write_event(Synthesize(text="Nobody has this voice.", voice=voice).event())
        error = Error.from_event((await events_until(client, "error"))[-1])
        assert error.code == "voice_not_found"
        await client.write_event(SynthesizeStart(voice=voice).event())
        await client.write_event(SynthesizeChunk(text="Still nobody.").event())
        await client.write_event(SynthesizeStop().event())
        events = await events_until(client, "synthesize-stopped")
    assert [e.type for e in events] == ["error", "synthesize-stopped"]
    assert Error.from_event(events[0]).code == "voice_not_found"
    assert not any(AudioStop.is_type(e.type) for e in events)


def test_the_zeroconf_announcement_is_what_home_assistant_browses_for() -> None:
    info = service_info(10200, "minestream", "192.0.2.7")
    assert info.type == ZEROCONF_TYPE == "_wyoming._tcp.local."
    assert info.name == "minestream._wyoming._tcp.local." and info.port == 10200
    assert info.parsed_addresses() == ["192.0.2.7"]
