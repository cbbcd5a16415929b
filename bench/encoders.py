"""Streaming encoder benchmark: CPU per second of audio for each response format.

    python -m bench.encoders [--seconds 20] [--repeat 5] [--chunk-ms 100] [--no-write]

Each format of ``server.encoders`` encodes the same speech (espeak-ng, or a
synthetic voice-like signal where espeak-ng is missing), fed in chunks as an
engine makes them, on this thread. Reported per format:

* ``CPU / audio``: this thread's CPU time over the audio's duration (the median
  of ``--repeat`` runs), i.e. the fraction of one core a stream costs; its
  inverse is how many streams one core could encode at once;
* ``kb/s`` and ``PCM / size``: the stream's bitrate and how many times smaller
  it is than 16-bit PCM at 24 kHz;
* ``lag ms``: the most audio fed but not yet decodable from the bytes sent (the
  codec's frame, look-ahead and the resampler), over the run.

CPU speed differs between machines: compare formats within one run. Results are
printed and written to the "Encoders" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import av
import numpy as np

from server.audio import from_pcm_bytes, resample
from server.encoders import FORMATS, encoder
from server.engines.base import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
STREAMS = [(f, SAMPLE_RATE) for f in FORMATS] + [("opus", 48000)]
TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)


def speech(seconds: float) -> np.ndarray:
    """``seconds`` of 24 kHz speech: espeak-ng's, repeated, else a synthetic stand-in."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), TEXT], check=True, timeout=60)
            with wave.open(str(path), "rb") as wav:
                rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
        once = resample(from_pcm_bytes(frames, "pcm_s16le"), rate, SAMPLE_RATE)
    else:
        t = np.arange(SAMPLE_RATE * 4) / SAMPLE_RATE
        pitch = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
        voice = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / SAMPLE_RATE) / k for k in range(1, 12))
        once = (0.2 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2).astype(np.float32)
    repeats = int(np.ceil(seconds * SAMPLE_RATE / len(once)))
    return np.tile(once, repeats)[: int(seconds * SAMPLE_RATE)].astype(np.float32)


def decodable_seconds(data: bytes, fmt: str, rate: int) -> float:
    if fmt == "pcm":
        return len(data) / 2 / rate
    try:
        with av.open(io.BytesIO(data), "r") as container:
            stream = container.streams.audio[0]
            return sum(frame.samples for frame in container.decode(stream)) / stream.rate
    except (av.FFmpegError, EOFError, IndexError):
        return 0.0  # too little yet for FFmpeg to recognise the stream


def cpu_run(fmt: str, rate: int, pcm: np.ndarray, chunk: int) -> tuple[float, int]:
    """This thread's CPU seconds to encode ``pcm`` in chunks, and the bytes made."""
    start = time.thread_time()
    stream = encoder(fmt, rate)
    size = sum(len(stream.encode(pcm[i : i + chunk])) for i in range(0, len(pcm), chunk))
    size += len(stream.finish())
    return time.thread_time() - start, size


def worst_lag_ms(fmt: str, rate: int, pcm: np.ndarray, chunk: int) -> float:
    """The most audio fed but not yet decodable from what was sent, over the first two seconds."""
    stream = encoder(fmt, rate)
    sent, worst = b"", 0.0
    for index, start in enumerate(range(0, min(len(pcm), 2 * SAMPLE_RATE), chunk)):
        sent += stream.encode(pcm[start : start + chunk])
        if index >= 2:  # a few frames first, for FFmpeg's probe
            fed = (start + chunk) / SAMPLE_RATE
            worst = max(worst, fed - decodable_seconds(sent, fmt, rate))
    stream.close()
    return worst * 1000


def measure(seconds: float, repeat: int, chunk_ms: int) -> list[dict[str, float | str]]:
    pcm = speech(seconds)
    chunk = SAMPLE_RATE * chunk_ms // 1000
    rows: list[dict[str, float | str]] = []
    for fmt, rate in STREAMS:
        runs = [cpu_run(fmt, rate, pcm, chunk) for _ in range(repeat)]
        cpu = statistics.median(r[0] for r in runs)
        size = runs[0][1]
        rows.append({
            "format": fmt if rate == SAMPLE_RATE else f"{fmt} ({rate // 1000} kHz)",
            "cpu": cpu / seconds,
            "kbps": size * 8 / seconds / 1000,
            "smaller": len(pcm) * 2 / size,
            "lag": worst_lag_ms(fmt, rate, pcm, chunk),
        })  # fmt: skip
    return rows


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    return platform.processor() or platform.machine()


def table(rows: list[dict[str, float | str]], seconds: float, repeat: int, chunk_ms: int) -> str:
    lines = [
        f"`python -m bench.encoders --seconds {seconds:g} --repeat {repeat} --chunk-ms {chunk_ms}`: {seconds:g} s of espeak-ng speech "
        f"fed in {chunk_ms} ms chunks, on one thread; {cpu_name()}, Python {platform.python_version()}, "
        f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}), {time.strftime('%Y-%m-%d')}.",
        "",
        "CPU / audio: the encoding thread's CPU time over the audio's duration (the share of one core a stream costs; "
        "the median of the runs). PCM / size: how many times smaller than 16-bit PCM at 24 kHz. Lag: the most audio "
        "fed but not yet decodable from the bytes sent (frame, look-ahead, resampler).",
        "",
        "| format | CPU / audio | streams per core | kb/s | PCM / size | lag ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cpu = float(row["cpu"])
        lines.append(
            f"| {row['format']} | {cpu:.4f} | {1 / cpu if cpu else float('inf'):.0f} | {float(row['kbps']):.1f} "
            f"| {float(row['smaller']):.1f} | {float(row['lag']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(text: str) -> None:
    section = "## Encoders\n\n" + text.strip() + "\n"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Encoders\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(new)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of speech to encode per run (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per format; the median CPU time is kept (default 5)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="chunk size fed to the encoder, as an engine would (default 100)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1 or args.chunk_ms < 1:
        parser.error("--seconds, --repeat and --chunk-ms must be positive")
    text = table(measure(args.seconds, args.repeat, args.chunk_ms), args.seconds, args.repeat, args.chunk_ms)
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
