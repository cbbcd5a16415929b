"""PCM helpers: format conversion, streaming resampling, WAV in and out."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import numpy as np
import soxr

SAMPLE_RATE = 24000
"""Every engine speaks 24 kHz mono float32 in [-1, 1]; sessions convert."""


def to_int16(pcm: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] to 16-bit samples (int16 passes through)."""
    if pcm.dtype == np.int16:
        return pcm
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_pcm_bytes(pcm: np.ndarray, fmt: str) -> bytes:
    """float32 [-1, 1] to the wire format of protocol v1."""
    if fmt == "pcm_f32le":
        return np.ascontiguousarray(pcm, dtype="<f4").tobytes()
    return to_int16(pcm).astype("<i2", copy=False).tobytes()


def from_pcm_bytes(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm_f32le":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return pcm.astype(np.float32, copy=False)
    out: np.ndarray = soxr.resample(pcm.astype(np.float32, copy=False), rate_in, rate_out, quality="HQ")
    return out.astype(np.float32, copy=False)


class StreamResampler:
    """Resamples one continuous stream chunk by chunk without seams.

    A one-shot resample per chunk would restart the filter at every chunk
    boundary and click; soxr's stream keeps the filter state between chunks.
    """

    def __init__(self, rate_out: int, rate_in: int = SAMPLE_RATE) -> None:
        self.passthrough = rate_in == rate_out
        self._stream = None if self.passthrough else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm.astype(np.float32, copy=False)
        out: np.ndarray = self._stream.resample_chunk(pcm.astype(np.float32, copy=False), last=last)
        return out


def wav_bytes(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(to_pcm_bytes(pcm, "pcm_s16le"))
    return buffer.getvalue()


def streaming_wav_header(rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for a body of unknown length.

    The sizes are set to the maximum, as streaming servers do, since the
    length is not known when the first bytes go out; players read to the end.
    """
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data" + struct.pack("<I", unknown)
    )


def write_wav(path: Path, pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(wav_bytes(pcm, rate))
    tmp.replace(path)


def read_wav(path: Path) -> np.ndarray:
    """A mono 16-bit WAV written by ``write_wav``, as float32 at its own rate."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
    return from_pcm_bytes(frames, "pcm_s16le")


def duration_ms(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> int:
    return int(round(len(pcm) * 1000 / rate))
