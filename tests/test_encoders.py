"""The streaming encoders, checked by decoding what they send with PyAV (FFmpeg's decoders)."""

from __future__ import annotations

import io
import struct
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import soxr

from server.audio import read_wav
from server.encoders import CONTENT_TYPES, FORMATS, Encoder, encoder
from server.ogg import crc32

RATE = 24000
STREAMS = [(f, RATE) for f in FORMATS] + [("opus", 48000), ("mp3", 16000), ("wav", 8000)]
# What a codec adds at the ends, in samples: its priming (no Xing/LAME header on
# a stream to say how much) and the last frame's padding, two or three frames.
PADDING = {"mp3": 3 * 576, "aac": 2 * 1024 + 64}
# How far the decodable part of what was sent may trail what was fed: about a
# frame (Opus: 20 ms; FLAC: 96 ms), a couple for AAC (43 ms each), and LAME's
# look-ahead and bit reservoir for MP3; at another rate than 24 kHz, the
# resampler's filter too.
LAG_MS = {"mp3": 180, "aac": 100, "flac": 100, "opus": 25}
RESAMPLER_MS = 80  # soxr streams in blocks: up to ~70 ms at 8 kHz, ~35 ms at 48 kHz
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> np.ndarray:
    with wave.open(str(speech_wav), "rb") as wav:
        rate = wav.getframerate()
    samples: np.ndarray = soxr.resample(read_wav(speech_wav), rate, RATE).astype(np.float32)
    return samples


def _id(stream: tuple[str, int]) -> str:
    return f"{stream[0]}@{stream[1]}"


def _varied_chunks(pcm: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """``pcm`` in chunks from 1 sample to half a second, some empty."""
    rng = np.random.default_rng(seed)
    chunks, start = [], 0
    while start < len(pcm):
        size = int(rng.choice([0, 1, 7, 480, 1000, 2400, 4321, 12000]))
        chunks.append(pcm[start : start + size])
        start += size
    return chunks


def _decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, as FFmpeg decodes ``data``."""
    raw = fmt == "pcm"
    options = {"sample_rate": str(rate), "ch_layout": "mono"} if raw else None
    with av.open(io.BytesIO(data), "r", format="s16le" if raw else None, options=options) as container:
        if fmt != "pcm":
            assert container.format.name.split(",")[0] == CONTAINERS[fmt]
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        decoded_rate = stream.rate
    samples: np.ndarray = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    scale = 32768.0 if samples.dtype == np.int16 else 2.0**31 if samples.dtype == np.int32 else 1.0
    return (samples / scale).astype(np.float32), decoded_rate


def _at_24k(samples: np.ndarray, rate: int) -> np.ndarray:
    return samples if rate == RATE else soxr.resample(samples, rate, RATE).astype(np.float32)


def _aligned_correlation(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> float:
    """Pearson correlation of ``decoded`` with ``reference`` at the delay (up to ``max_lag``) that fits best."""
    size = 1 << (len(reference) + len(decoded)).bit_length()
    cross = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(cross[: max_lag + 1]))
    length = min(len(reference), len(decoded) - lag)
    return float(np.corrcoef(reference[:length], decoded[lag : lag + length])[0, 1])


def _encode_all(stream: Encoder, chunks: list[np.ndarray]) -> tuple[list[bytes], bytes]:
    return [stream.encode(chunk) for chunk in chunks], stream.finish()


@pytest.mark.parametrize("stream", STREAMS, ids=_id)
def test_each_format_decodes_back_to_the_speech(stream: tuple[str, int], speech: np.ndarray) -> None:
    fmt, rate = stream
    parts, tail = _encode_all(encoder(fmt, rate), _varied_chunks(speech))
    decoded, decoded_rate = _decode(b"".join(parts) + tail, fmt, rate)
    # Opus decoders always give 48 kHz; every other format keeps the rate asked for.
    assert decoded_rate == (48000 if fmt == "opus" else rate)
    expected = len(speech) * decoded_rate / RATE
    padding = PADDING.get(fmt, decoded_rate // 1000)
    assert expected - decoded_rate / 1000 <= len(decoded) <= expected + padding, (len(decoded), expected)
    reference = speech if rate == RATE else soxr.resample(speech, RATE, rate).astype(np.float32)
    heard = decoded if decoded_rate == rate else soxr.resample(decoded, decoded_rate, rate).astype(np.float32)
    assert _aligned_correlation(reference, heard, max_lag=rate // 10) > 0.9


@pytest.mark.parametrize("stream", STREAMS, ids=_id)
def test_bytes_arrive_as_the_audio_is_made(stream: tuple[str, int], speech: np.ndarray) -> None:
    """After each 100 ms chunk, what was sent so far decodes to all but at most a frame of what was fed."""
    fmt, rate = stream
    encoding = encoder(fmt, rate)
    sent = b""
    for index, start in enumerate(range(0, 2 * RATE, RATE // 10)):
        sent += encoding.encode(speech[start : start + RATE // 10])
        if index < 2:
            continue  # FFmpeg's probe wants a few frames before it names an MP3
        decoded, decoded_rate = _decode(sent, fmt, rate)
        fed_ms = (start + RATE // 10) * 1000 / RATE
        allowed = LAG_MS.get(fmt, 0) + (RESAMPLER_MS if rate != RATE else 0)
        assert fed_ms - len(decoded) * 1000 / decoded_rate <= allowed, (index, fed_ms)
    encoding.close()


def test_each_opus_chunk_is_whole_ogg_pages(speech: np.ndarray) -> None:
    """The socket sends each chunk's bytes as one message: they must be complete pages, in order."""
    encoding = encoder("opus")
    messages = [encoding.encode(chunk) for chunk in _varied_chunks(speech[: 3 * RATE], seed=1)]
    messages.append(encoding.finish())
    pages = []
    for message in filter(None, messages):
        offset = 0
        while offset < len(message):
            page = _ogg_page(message, offset)
            pages.append(page)
            offset += page.size
        assert offset == len(message)
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert pages[0].flags == 0x02 and pages[0].body.startswith(b"OpusHead")
    assert pages[1].body.startswith(b"OpusTags")
    assert pages[-1].flags & 0x04 and not any(p.flags & 0x04 for p in pages[:-1])
    granules = [p.granule for p in pages[2:]]
    assert granules == sorted(granules)
    pre_skip = struct.unpack_from("<H", pages[0].body, 10)[0]
    assert granules[-1] - pre_skip == 3 * 48000  # the end is trimmed to the last sample fed
    # Every chunk of 20 ms (one Opus frame) or more is sent at once, not held back for a later page.
    assert all(messages[i] for i, chunk in enumerate(_varied_chunks(speech[: 3 * RATE], seed=1)) if len(chunk) >= 480)


@dataclass
class _Page:
    flags: int
    granule: int
    sequence: int
    size: int
    body: bytes


def _ogg_page(data: bytes, offset: int) -> _Page:
    magic, version, flags, granule, serial, sequence, crc, count = struct.unpack_from("<4sBBqIIIB", data, offset)
    assert magic == b"OggS" and version == 0
    lacing = data[offset + 27 : offset + 27 + count]
    size = 27 + count + sum(lacing)
    page = bytearray(data[offset : offset + size])
    page[22:26] = b"\0\0\0\0"
    assert crc32(bytes(page)) == crc
    return _Page(flags, granule, sequence, size, bytes(page[27 + count :]))


def test_the_ogg_crc_matches_ffmpegs_muxer() -> None:
    sink = io.BytesIO()
    with av.open(sink, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = sink.getvalue()
    first = bytearray(data[: 27 + data[26] + sum(data[27 : 27 + data[26]])])
    stored = struct.unpack_from("<I", first, 22)[0]
    first[22:26] = b"\0\0\0\0"
    assert crc32(bytes(first)) == stored


def test_opus_is_about_a_tenth_of_pcm(speech: np.ndarray) -> None:
    pcm_bytes = len(speech) * 2
    for rate in (24000, 48000):
        parts, tail = _encode_all(encoder("opus", rate), _varied_chunks(speech))
        ratio = pcm_bytes / len(b"".join(parts) + tail)
        assert ratio > 8, (rate, ratio)  # 32 kb/s against 384 kb/s, with the Ogg framing


def test_wav_streams_with_a_header_of_unknown_length(speech: np.ndarray) -> None:
    encoding = encoder("wav")
    first = encoding.encode(speech[:100])
    assert first[:4] == b"RIFF" and first[40:44] == b"\xff\xff\xff\xff" and len(first) == 44 + 200
    assert encoding.encode(speech[100:200]) == np.clip(np.round(speech[100:200] * 32767), -32768, 32767).astype("<i2").tobytes()
    assert encoding.finish() == b""


def test_very_short_and_odd_input_is_encoded_safely() -> None:
    loud = np.array([np.nan, np.inf, -np.inf, 3.0, -3.0] * 200, dtype=np.float64)
    for fmt in FORMATS:
        encoding = encoder(fmt)
        data = encoding.encode(loud) + encoding.encode(np.zeros(0, np.float32)) + encoding.finish()
        decoded, _ = _decode(data, fmt, RATE)
        assert len(decoded) >= len(loud) and np.all(np.isfinite(decoded))
        if fmt in ("pcm", "wav", "flac"):  # lossless: NaN is silence, the rest clipped to full scale
            assert np.allclose(decoded, np.tile([0.0, 1.0, -1.0, 1.0, -1.0], 200), atol=1e-4)
        else:  # lossy codecs ring on a full-scale buzz at the Nyquist rate, but stay bounded
            assert np.abs(decoded).max() < 2.0
        assert CONTENT_TYPES[fmt].startswith("audio/")


def test_bad_requests_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'ogg'"):
        encoder("ogg")
    with pytest.raises(ValueError, match="Opus takes"):
        encoder("opus", 44100)
    with pytest.raises(ValueError, match="outside"):
        encoder("wav", 96000)
    encoding = encoder("mp3")
    with pytest.raises(ValueError, match="mono"):
        encoding.encode(np.zeros((2, 100), np.float32))
    encoding.finish()
    with pytest.raises(RuntimeError, match="finished"):
        encoding.encode(np.zeros(10, np.float32))
    abandoned = encoder("aac")
    abandoned.encode(np.zeros(5000, np.float32))
    abandoned.close()  # a listener that left: no trailer, no error
    with pytest.raises(RuntimeError, match="finished"):
        abandoned.finish()


def test_encoders_run_on_worker_threads_side_by_side(speech: np.ndarray) -> None:
    """Each stream on its own thread, all at once: every stream comes out whole and its own."""
    streams = [("opus", 48000), ("mp3", RATE), ("aac", RATE), ("flac", RATE)] * 2
    signals = [speech * (0.3 + 0.1 * i) for i in range(len(streams))]
    results: dict[int, bytes] = {}

    def run(index: int) -> None:
        parts, tail = _encode_all(encoder(*streams[index]), _varied_chunks(signals[index], seed=index))
        results[index] = b"".join(parts) + tail

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(len(streams)))
    for index, (fmt, rate) in enumerate(streams):
        decoded, decoded_rate = _decode(results[index], fmt, rate)
        heard = soxr.resample(decoded, decoded_rate, RATE).astype(np.float32) if decoded_rate != RATE else decoded
        assert _aligned_correlation(signals[index], heard, max_lag=RATE // 10) > 0.9
        level = np.sqrt(np.mean(heard**2)) / np.sqrt(np.mean(signals[index] ** 2))
        assert 0.8 < level < 1.25, (fmt, level)  # its own signal, not a neighbour's


def test_one_stream_may_move_between_threads_call_by_call(speech: np.ndarray) -> None:
    """As with ``asyncio.to_thread``: made on one thread, each call on whichever worker is free, one at a time."""
    chunks = _varied_chunks(speech[: 2 * RATE], seed=3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for fmt, rate in (("opus", 48000), ("mp3", RATE), ("flac", RATE)):
            encoding = encoder(fmt, rate)
            threads: set[int] = set()

            def call(chunk: np.ndarray | None, encoding: Encoder = encoding, threads: set[int] = threads) -> bytes:
                threads.add(threading.get_ident())
                return encoding.finish() if chunk is None else encoding.encode(chunk)

            data = b"".join(pool.submit(call, chunk).result(timeout=30) for chunk in [*chunks, None])
            decoded, decoded_rate = _decode(data, fmt, rate)
            heard = soxr.resample(decoded, decoded_rate, RATE).astype(np.float32) if decoded_rate != RATE else decoded
            assert _aligned_correlation(speech[: 2 * RATE], heard, max_lag=RATE // 10) > 0.9
            assert threading.get_ident() not in threads


def test_the_benchmark_runs_and_reports_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import encoders as bench

    bench.main(["--seconds", "1", "--repeat", "1", "--no-write"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| format")]
    assert [row.split("|")[1].strip() for row in rows] == [*FORMATS, "opus (48 kHz)"]
    for row in rows:
        cpu, per_core, kbps, smaller, lag = (float(cell) for cell in row.split("|")[2:7])
        assert cpu > 0 and kbps > 0 and smaller >= 1 and lag >= 0
