"""Decoder-level tests for server.ingest and server.reference.

The corpus (tests/corpus/, made by tests/record_corpus.py) holds real Chromium
MediaRecorder uploads, piece by piece, and PyAV-made files. Each upload is fed
piece by piece and compared with an independent one-shot decode of the file.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import ingest
from server.audio import SAMPLE_RATE
from server.errors import LimitExceeded, UnsupportedAudio
from server.ingest import ReferenceDecoder, decode_bytes
from server.reference import frame_dbfs, prepare_reference

CORPUS = Path(__file__).parent / "corpus"
RECORDINGS = sorted(p.name for p in CORPUS.iterdir() if (p / "index.json").exists())
STREAMABLE = [name for name in RECORDINGS if name != "pyav-mp4-aac"]  # moov last


def load(name: str) -> tuple[list[bytes], str, bytes]:
    """(pieces as the recorder sent them, mime, whole file)."""
    index = json.loads((CORPUS / name / "index.json").read_text())
    data = (CORPUS / name / index["file"]).read_bytes()
    offsets = np.cumsum([0, *index["pieces"]])
    return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)], index["mime"], data


def one_shot(data: bytes) -> np.ndarray:
    """Reference decode, independent of server.ingest: PyAV, channel mean, soxr."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        blocks = [f.to_ndarray() for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
        fmt = stream.codec_context.format
    pcm = np.concatenate(blocks, axis=1)
    if not fmt.is_planar:
        pcm = pcm.reshape(-1, stream.codec_context.channels).T
    scale = 1 / 32768 if pcm.dtype == np.int16 else 1.0
    pcm = pcm.astype(np.float64) * scale
    mono = pcm.mean(axis=0).astype(np.float32)
    return soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)


async def feed_all(pieces: list[bytes], mime: str | None = None, **kw: float) -> tuple[np.ndarray, list[int]]:
    dec = ReferenceDecoder(mime, **kw)
    progress = []
    try:
        for piece in pieces:
            await dec.feed(piece)
            progress.append(dec.decoded_ms)
        return await dec.finish(), progress
    finally:
        await dec.abort()


def ingest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(ingest.THREAD_PREFIX)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 2.0
    while ingest_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ingest_threads(), "a decoder thread outlived its test"


def tone(seconds: float, rate: int = SAMPLE_RATE, level: float = 0.3, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(pcm: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = np.repeat(pcm[:, None], channels, axis=1) if channels > 1 else pcm
        w.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# -- the corpus, piece by piece -----------------------------------------------------


def test_corpus_has_browser_recordings() -> None:
    names = set(RECORDINGS)
    for kind in ("webm-opus", "mp4"):
        for slice_ms in (100, 250, 1000):
            assert f"chrome-{kind}-{slice_ms}ms" in names
    assert {"pyav-ogg-opus", "pyav-fmp4-aac", "pyav-mp4-aac"} <= names
    size = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    assert size < 3 * 1024 * 1024


@pytest.mark.parametrize("name", RECORDINGS)
def test_piecewise_matches_one_shot(name: str) -> None:
    pieces, mime, data = load(name)
    pcm, progress = asyncio.run(feed_all(pieces, mime))
    reference = one_shot(data)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(pcm.size - reference.size) <= 0.020 * SAMPLE_RATE
    assert correlation(pcm, reference) > 0.99
    if name in STREAMABLE and len(pieces) > 2:
        # Decoding happens while the upload goes on, not only at the end.
        assert progress[-2] > 0
        assert progress == sorted(progress)


def test_chrome_records_stereo_48k_and_downmix_keeps_level() -> None:
    _, _, data = load("chrome-webm-opus-250ms")
    with av.open(io.BytesIO(data)) as c:
        assert (c.streams.audio[0].rate, c.streams.audio[0].channels) == (48000, 2)
    pcm = asyncio.run(decode_bytes(wav_bytes(tone(1.0, 48000, level=0.5), 48000, channels=2)))
    assert abs(float(np.max(np.abs(pcm))) - 0.5) < 0.01


def test_decode_bytes_handles_moov_at_end() -> None:
    _, mime, data = load("pyav-mp4-aac")
    pcm = asyncio.run(decode_bytes(data, mime))
    assert abs(pcm.size / SAMPLE_RATE - 3.0) < 0.1


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["chrome-webm-opus-100ms", "chrome-mp4-1000ms", "pyav-ogg-opus",
                             "pyav-fmp4-aac", "pyav-mp3"]),
       cuts=st.lists(st.floats(0.0, 1.0), max_size=12))
def test_random_byte_splits_give_same_pcm(name: str, cuts: list[float]) -> None:
    _, mime, data = load(name)
    offsets = sorted({0, len(data), *(int(c * len(data)) for c in cuts)})
    pieces = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    split, _ = asyncio.run(feed_all(pieces, mime))
    whole, _ = asyncio.run(feed_all([data], mime))
    np.testing.assert_array_equal(split, whole)


def test_tiny_first_piece_does_not_stall() -> None:
    pieces, mime, data = load("chrome-webm-opus-250ms")

    async def run() -> int:
        dec = ReferenceDecoder(mime)
        for piece in (data[:3], data[3:40], data[40:len(pieces[0])], *pieces[1:3]):
            await dec.feed(piece)
        decoded = dec.decoded_ms
        await dec.abort()
        return decoded

    assert asyncio.run(run()) > 0


# -- bad input ---------------------------------------------------------------


def run_bad(pieces: list[bytes], mime: str | None = None, **kw: float) -> np.ndarray | Exception:
    try:
        return asyncio.run(feed_all(pieces, mime, **kw))[0]
    except (UnsupportedAudio, LimitExceeded) as exc:
        assert exc.message and "Traceback" not in exc.message
        return exc


@pytest.mark.parametrize("pieces", [[b""], [], [b"", b""]], ids=["empty-piece", "nothing", "empties"])
def test_no_audio_is_an_error(pieces: list[bytes]) -> None:
    result = run_bad(pieces)
    assert isinstance(result, UnsupportedAudio) and "No audio" in result.message


def test_empty_pieces_are_skipped() -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")
    with_empties = [b""] + [p for piece in pieces for p in (piece, b"")]
    pcm, _ = asyncio.run(feed_all(with_empties, mime))
    plain, _ = asyncio.run(feed_all(pieces, mime))
    np.testing.assert_array_equal(pcm, plain)


@pytest.mark.parametrize("garbage", [b"hello world, not audio" * 100, bytes(range(256)) * 20, b"\x00" * 5000])
def test_garbage_is_unsupported(garbage: bytes) -> None:
    result = run_bad([garbage[:1000], garbage[1000:]], "audio/webm")
    assert isinstance(result, UnsupportedAudio) and "known format" in result.message


def test_later_piece_without_first_is_explained() -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")
    for name in ("chrome-webm-opus-250ms", "chrome-mp4-250ms"):
        pieces, mime, _ = load(name)
        result = run_bad(pieces[1:], mime)
        assert isinstance(result, UnsupportedAudio) and "first" in result.message


def test_another_format_mid_stream() -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")
    ogg, _, _ = load("pyav-ogg-opus")
    result = run_bad(pieces[:3] + ogg[:2] + pieces[3:], mime)
    assert isinstance(result, UnsupportedAudio) and "new Ogg file" in result.message


@pytest.mark.parametrize("name", ["chrome-webm-opus-250ms", "chrome-mp4-250ms", "pyav-fmp4-aac", "pyav-mp3"])
def test_corrupt_or_truncated_piece_is_clean(name: str) -> None:
    pieces, mime, data = load(name)
    full = one_shot(data).size
    k = len(pieces) // 2
    noise = np.random.default_rng(0).integers(0, 256, len(pieces[k]), dtype=np.uint8).tobytes()
    for variant in (pieces[:k] + [noise] + pieces[k + 1:],  # a corrupt piece
                    pieces[:k] + [pieces[k][: len(pieces[k]) // 3]],  # upload cut short
                    [data[: len(data) // 2]]):
        result = run_bad(variant, mime)
        # Without checksums a damaged block may decode to noise; what matters is
        # a clear error or plausible audio, never a crash or a hang.
        assert isinstance(result, UnsupportedAudio) or (
            isinstance(result, np.ndarray) and 0 < result.size <= full + SAMPLE_RATE // 50)


def test_decoded_length_cap() -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")
    result = run_bad(pieces, mime, max_seconds=1.0)  # hard cap 2 s, recording ~4 s
    assert isinstance(result, LimitExceeded) and "longer than 2 s" in result.message


def test_feed_after_error_and_after_finish() -> None:
    async def run() -> None:
        dec = ReferenceDecoder()
        with pytest.raises(UnsupportedAudio):
            await dec.feed(b"definitely not audio at all")
        with pytest.raises(UnsupportedAudio):
            await dec.feed(b"more")
        with pytest.raises(UnsupportedAudio):
            await dec.finish()
        await dec.abort()
        await dec.abort()

    asyncio.run(run())


def test_abort_mid_upload_ends_thread() -> None:
    pieces, mime, _ = load("chrome-webm-opus-100ms")

    async def run() -> None:
        dec = ReferenceDecoder(mime)
        for piece in pieces[:5]:
            await dec.feed(piece)
        assert len(ingest_threads()) == 1
        await dec.abort()
        await dec.abort()
        with pytest.raises(UnsupportedAudio):
            await dec.feed(pieces[5])

    asyncio.run(run())


def test_dropped_decoder_ends_its_thread() -> None:
    pieces, mime, _ = load("pyav-ogg-opus")

    async def run() -> None:
        dec = ReferenceDecoder(mime)
        await dec.feed(pieces[0])
        assert ingest_threads()
        del dec
        gc.collect()

    asyncio.run(run())  # the autouse fixture checks the thread is gone


def test_stalled_upload_gives_up() -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")

    async def run() -> None:
        dec = ReferenceDecoder(mime, idle_timeout=0.1)
        await dec.feed(pieces[0])
        await asyncio.sleep(0.3)
        with pytest.raises(UnsupportedAudio, match="stalled"):
            await dec.feed(pieces[1])

    asyncio.run(run())


def test_many_uploads_in_parallel() -> None:
    pieces, mime, data = load("chrome-webm-opus-250ms")

    async def run() -> list[np.ndarray]:
        return [r[0] for r in await asyncio.gather(*(feed_all(pieces, mime) for _ in range(8)))]

    results = asyncio.run(run())
    assert all(np.array_equal(r, results[0]) for r in results)


# -- prepare_reference -----------------------------------------------------------


def speechy(seconds: float, level: float = 0.3) -> np.ndarray:
    """A tone gated like syllables, 3 per second."""
    sig = tone(seconds, level=level)
    gate = (np.sin(2 * np.pi * 3 * np.arange(sig.size) / SAMPLE_RATE) > -0.3).astype(np.float32)
    return sig * gate


def test_reference_trims_and_normalises() -> None:
    quiet = np.zeros(SAMPLE_RATE, np.float32)
    pcm = np.concatenate([quiet, speechy(3.0, level=0.02), quiet])
    ref = prepare_reference(pcm)
    assert 3.0 <= ref.size / SAMPLE_RATE <= 3.4  # silence gone, 150 ms margins
    rms = np.sqrt(np.mean(ref**2))
    assert 0.05 < rms < 0.2 and np.max(np.abs(ref)) <= 0.95 + 1e-6


def test_reference_from_corpus_is_fine() -> None:
    pieces, mime, _ = load("chrome-webm-opus-1000ms")
    pcm, _ = asyncio.run(feed_all(pieces, mime))
    ref = prepare_reference(pcm)
    assert ref.size > SAMPLE_RATE and ref.dtype == np.float32


@pytest.mark.parametrize(("pcm", "words"), [
    (np.zeros(3 * SAMPLE_RATE, np.float32), "silent"),
    (np.random.default_rng(1).normal(0, 1e-4, 3 * SAMPLE_RATE).astype(np.float32), "silent"),
    (np.concatenate([np.zeros(SAMPLE_RATE, np.float32), tone(0.5)]), "at least 1 s"),
    (np.clip(speechy(3.0) * 20, -1, 1), "clipped"),
    (np.zeros(0, np.float32), "empty"),
], ids=["zeros", "noise-floor", "too-short", "clipped", "empty"])
def test_reference_rejections(pcm: np.ndarray, words: str) -> None:
    with pytest.raises(UnsupportedAudio, match=words):
        prepare_reference(pcm)


def test_long_reference_keeps_best_15_to_20_s() -> None:
    mumble = speechy(20.0, level=0.3) * (np.arange(20 * SAMPLE_RATE) % SAMPLE_RATE < SAMPLE_RATE // 5)
    pcm = np.concatenate([mumble, speechy(25.0), mumble]).astype(np.float32)
    ref = prepare_reference(pcm, max_seconds=30.0)
    assert 15.0 <= ref.size / SAMPLE_RATE <= 20.0 + 0.01
    # The kept window lies in the dense middle part, not in the sparse edges.
    active = frame_dbfs(ref) > -40
    assert active.mean() > 0.5


def test_raw_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "MAX_RAW_BYTES", 20_000)
    pieces, mime, _ = load("chrome-webm-opus-250ms")
    result = run_bad(pieces, mime)
    assert isinstance(result, LimitExceeded) and "larger than" in result.message


def test_mp4_without_index_is_unsupported() -> None:
    ftyp = (24).to_bytes(4, "big") + b"ftypisom" + bytes(12)
    free = (1000).to_bytes(4, "big") + b"free" + bytes(992)
    result = run_bad([ftyp, free[:500], free[500:]], "audio/mp4")
    assert isinstance(result, UnsupportedAudio) and "moov" in result.message


def test_event_loop_keeps_running_during_a_big_upload() -> None:
    data = wav_bytes(tone(20.0, 48000), 48000, channels=2)  # ~3.8 MB in one piece

    async def run() -> float:
        gaps, stop = [], asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        pcm = await decode_bytes(data)
        stop.set()
        await task
        assert abs(pcm.size / SAMPLE_RATE - 20.0) < 0.01
        return max(gaps)

    assert asyncio.run(run()) < 0.05
