"""What "this is speech" means in the tests."""

from __future__ import annotations

import numpy as np


def active_fraction(pcm: np.ndarray, rate: int, threshold_dbfs: float = -40.0) -> float:
    frame = rate // 50
    n = len(pcm) // frame
    if n == 0:
        return 0.0
    rms = np.sqrt((pcm[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    return float(np.mean(20 * np.log10(np.maximum(rms, 1e-9)) > threshold_dbfs))


def assert_speech(pcm: np.ndarray, rate: int, text: str) -> None:
    """Non-silent, with the pauses speech has, and as long as the text needs."""
    seconds = len(pcm) / rate
    chars = len(text)
    assert 0.03 * chars <= seconds <= 0.2 * chars + 0.5, f"{seconds:.2f} s for {chars} characters"
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 0.01, "audio is (nearly) silent"
    active = active_fraction(pcm, rate)
    assert 0.3 < active < 0.99, f"{active:.0%} of frames are active: not speech-like"


def decode(data: bytes, fmt: str, rate: int = 24000) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, as FFmpeg (PyAV) decodes ``data`` in OpenAI's ``fmt``."""
    import io

    import av

    raw = fmt == "pcm"
    options = {"sample_rate": str(rate), "ch_layout": "mono"} if raw else None
    with av.open(io.BytesIO(data), "r", format="s16le" if raw else None, options=options) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        decoded_rate = int(stream.rate)
    samples: np.ndarray = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    scale = 32768.0 if samples.dtype == np.int16 else 2.0**31 if samples.dtype == np.int32 else 1.0
    return (samples / scale).astype(np.float32), decoded_rate


CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}
"""The FFmpeg demuxer that must recognise each of OpenAI's formats."""


def container_of(data: bytes) -> str:
    import io

    import av

    with av.open(io.BytesIO(data), "r") as container:
        return str(container.format.name.split(",")[0])
