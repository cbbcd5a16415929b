"""16-bit mono WAV, written as the audio arrives.

A WAV header states the data's length before the data. ``WavWriter`` writes
the header with the largest lengths the format allows, then the samples as
they come; on a seekable file it goes back and writes the real lengths when
closed. On a pipe (``-o -``) it cannot, so the lengths stay at their maximum,
as ffmpeg and sox do for streamed WAV: players read to the end of the stream.
"""

from __future__ import annotations

import struct
from typing import IO

import numpy as np

STREAMING_SIZE = 0xFFFFFFFF
HEADER_BYTES = 44


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of 16-bit mono PCM; ``data_bytes`` None: unknown (streaming)."""
    size = STREAMING_SIZE if data_bytes is None else data_bytes
    riff = STREAMING_SIZE if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", size)
    )


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """A whole WAV file of ``pcm`` (float in [-1, 1] or int16)."""
    data = to_int16(pcm).tobytes()
    return wav_header(sample_rate, len(data)) + data


def to_int16(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype == np.int16:
        return pcm.astype("<i2", copy=False)
    return (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2")


class WavWriter:
    """Writes 16-bit PCM to ``stream`` as a WAV file, a piece at a time."""

    def __init__(self, stream: IO[bytes], sample_rate: int) -> None:
        self.stream = stream
        self.sample_rate = sample_rate
        self.data_bytes = 0
        stream.write(wav_header(sample_rate))

    def write(self, pcm_s16le: bytes) -> None:
        self.stream.write(pcm_s16le)
        self.stream.flush()
        self.data_bytes += len(pcm_s16le)

    def close(self) -> None:
        """Write the real lengths where the stream allows it; the stream stays open."""
        if self._seekable():
            end = self.stream.tell()
            self.stream.seek(0)
            self.stream.write(wav_header(self.sample_rate, self.data_bytes))
            self.stream.seek(end)
        self.stream.flush()

    def _seekable(self) -> bool:
        try:
            return self.stream.seekable()
        except (AttributeError, OSError, ValueError):
            return False
