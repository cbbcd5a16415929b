"""The WSOLA time-stretch (server/stretch.py) and the encoding thread (server/encoding.py)."""

from __future__ import annotations

import asyncio
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from server.audio import SAMPLE_RATE, read_wav
from server.encoding import EncodingStream
from server.engines.prosody import median_pitch
from server.stretch import TimeStretch
from tests.audio_checks import active_fraction, decode

SPEEDS = [0.25, 0.5, 0.8, 1.25, 2.0, 4.0]


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> np.ndarray:
    with wave.open(str(speech_wav), "rb") as wav:
        rate = wav.getframerate()
    samples: np.ndarray = soxr.resample(read_wav(speech_wav), rate, SAMPLE_RATE).astype(np.float32)
    return samples


def stretched(pcm: np.ndarray, speed: float, chunk: int | None = None) -> np.ndarray:
    stretch = TimeStretch(speed)
    if chunk is None:
        return stretch.process(pcm, last=True)
    parts = [stretch.process(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    return np.concatenate([*parts, stretch.process(np.zeros(0, np.float32), last=True)])


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


@pytest.mark.parametrize("speed", SPEEDS)
def test_a_tone_keeps_its_pitch_and_level_and_does_not_click(speed: float) -> None:
    out = stretched(tone(2.0), speed, chunk=2400)
    assert len(out) == round(2 * SAMPLE_RATE / speed)
    body = out[SAMPLE_RATE // 20 : -SAMPLE_RATE // 20]
    peak_hz = np.fft.rfftfreq(len(body), 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(body)))]
    assert abs(peak_hz - 220) < 2
    assert abs(float(np.sqrt(np.mean(body**2))) - 0.3 / np.sqrt(2)) < 0.01
    # A 220 Hz sine at 0.3 never moves more than 0.0173 between samples: a seam would.
    assert float(np.abs(np.diff(body)).max()) < 0.02


@pytest.mark.parametrize("speed", SPEEDS)
def test_speech_keeps_its_pitch_and_its_pauses(speech: np.ndarray, speed: float) -> None:
    out = stretched(speech, speed, chunk=1919)
    assert len(out) == round(len(speech) / speed)
    assert abs(median_pitch(out, SAMPLE_RATE) / median_pitch(speech, SAMPLE_RATE) - 1) < 0.08
    assert abs(active_fraction(out, SAMPLE_RATE) - active_fraction(speech, SAMPLE_RATE)) < 0.12


@pytest.mark.parametrize("chunk", [1, 97, 480, 4321])
def test_chunk_sizes_do_not_change_the_result(speech: np.ndarray, chunk: int) -> None:
    piece = speech[: SAMPLE_RATE // 2]
    assert np.array_equal(stretched(piece, 1.7, chunk=chunk), stretched(piece, 1.7))


def test_the_stream_keeps_little_back() -> None:
    """After each 100 ms chunk, all but ~40 ms of the stretched input has come out."""
    stretch, fed, out = TimeStretch(2.0), 0, 0
    for chunk in np.split(tone(1.0), 10):
        fed += len(chunk)
        out += len(stretch.process(chunk))
        assert fed / 2 - out <= SAMPLE_RATE * 0.05 / 2 + 360, (fed, out)


def test_speed_one_passes_through_and_bounds_are_checked() -> None:
    pcm = tone(0.1)
    assert TimeStretch(1.0).process(pcm) is not None and np.array_equal(TimeStretch(1.0).process(pcm), pcm)
    for bad in (0.2, 4.01, 0):
        with pytest.raises(ValueError):
            TimeStretch(bad)
    assert len(stretched(np.zeros(0, np.float32), 2.0)) == 0
    assert len(stretched(tone(0.001), 0.5)) == 48  # shorter than a frame still comes out, stretched
    finished = TimeStretch(2.0)
    finished.process(pcm, last=True)
    with pytest.raises(RuntimeError):
        finished.process(pcm)


async def test_the_encoding_stream_works_off_the_loop_one_call_at_a_time(speech: np.ndarray) -> None:
    stream = EncodingStream("flac", speed=2.0)
    threads = set()
    loop_thread = threading.get_ident()
    original = stream._encode

    def spy(pcm: np.ndarray) -> bytes:
        threads.add(threading.get_ident())
        return original(pcm)

    stream._encode = spy  # type: ignore[method-assign]
    data = b"".join([await stream.encode(chunk) for chunk in np.array_split(speech, 20)]) + await stream.finish()
    assert threads and loop_thread not in threads
    assert stream.samples == round(len(speech) / 2)
    decoded, rate = decode(data, "flac")
    assert rate == SAMPLE_RATE and abs(len(decoded) - len(speech) / 2) <= 1
    with pytest.raises(RuntimeError):
        await stream.encode(speech[:100])


async def test_closing_mid_stream_frees_the_thread(speech: np.ndarray) -> None:
    stream = EncodingStream("mp3")
    await stream.encode(speech[:4800])
    pending = asyncio.ensure_future(stream.encode(speech[4800:]))
    await asyncio.sleep(0)
    stream.close()
    await pending  # the chunk in flight completes; the encoder is closed behind it
    stream.close()  # twice is harmless
    for _ in range(100):
        if not any(t.name.startswith("encode-mp3") for t in threading.enumerate()):
            break
        await asyncio.sleep(0.01)
    assert not any(t.name.startswith("encode-mp3") for t in threading.enumerate())
