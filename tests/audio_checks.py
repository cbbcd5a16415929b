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
