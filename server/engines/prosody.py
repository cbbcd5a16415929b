"""How the preview engine approximates voice design and cloning.

Piper has one voice, so "design" and "clone" become three dials: pitch, pace
and energy. A description's words turn the dials; a reference recording is
measured (median pitch, speaking rate) and the dials are set to match it.
This is an approximation, and everything that shows the preview engine says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Style:
    pitch: float = 1.0
    """Multiplier on the fundamental frequency (1 = the bundled voice)."""
    pace: float = 1.0
    """Multiplier on speaking rate (above 1 is faster)."""
    energy: float = 1.0
    """Output level and expressiveness (below 1 is softer, flatter)."""
    whisper: bool = False


# Word -> (pitch, pace, energy) factors. Several words multiply.
_WORDS: dict[str, tuple[float, float, float]] = {
    "deep": (0.8, 1.0, 1.0), "low": (0.85, 1.0, 1.0), "bass": (0.75, 1.0, 1.0),
    "baritone": (0.85, 1.0, 1.0), "gravelly": (0.85, 0.95, 1.0), "booming": (0.8, 1.0, 1.15),
    "high": (1.2, 1.0, 1.0), "squeaky": (1.35, 1.05, 1.0), "bright": (1.1, 1.05, 1.05),
    "female": (1.45, 1.0, 1.0), "woman": (1.45, 1.0, 1.0), "girl": (1.6, 1.05, 1.0),
    "child": (1.6, 1.05, 1.0), "kid": (1.6, 1.05, 1.0), "boy": (1.3, 1.05, 1.0),
    "male": (1.0, 1.0, 1.0), "man": (1.0, 1.0, 1.0),
    "slow": (1.0, 0.8, 1.0), "slowly": (1.0, 0.8, 1.0), "measured": (1.0, 0.9, 1.0),
    "fast": (1.0, 1.25, 1.0), "quick": (1.0, 1.2, 1.0), "rapid": (1.0, 1.3, 1.0),
    "calm": (0.97, 0.9, 0.85), "soothing": (0.97, 0.88, 0.8), "gentle": (1.0, 0.92, 0.8),
    "soft": (1.0, 0.95, 0.75), "relaxed": (0.98, 0.9, 0.85), "warm": (0.95, 0.95, 0.95),
    "energetic": (1.08, 1.15, 1.2), "excited": (1.12, 1.2, 1.25), "cheerful": (1.08, 1.1, 1.15),
    "loud": (1.0, 1.0, 1.3), "angry": (1.0, 1.1, 1.3), "sad": (0.95, 0.85, 0.8),
    "old": (0.92, 0.85, 0.9), "elderly": (0.9, 0.82, 0.85), "young": (1.1, 1.05, 1.05),
}


def style_from_description(description: str) -> Style:
    pitch = pace = energy = 1.0
    words = re.findall(r"[a-z]+", description.lower())
    for index, word in enumerate(words):
        factors = _WORDS.get(word)
        if factors is None:
            continue
        # "very deep" turns the dial further, "slightly deep" less.
        previous = words[index - 1] if index else ""
        strength = 1.5 if previous in ("very", "extremely", "really") else 0.5 if previous in ("slightly", "somewhat", "bit") else 1.0
        pitch *= factors[0] ** strength
        pace *= factors[1] ** strength
        energy *= factors[2] ** strength
    return Style(
        pitch=float(np.clip(pitch, 0.6, 1.9)),
        pace=float(np.clip(pace, 0.6, 1.6)),
        energy=float(np.clip(energy, 0.5, 1.4)),
        whisper=any(w.startswith("whisper") for w in words),
    )


def median_pitch(pcm: np.ndarray, rate: int) -> float | None:
    """Median fundamental frequency (Hz) of the voiced frames, or None.

    Autocorrelation per 40 ms frame, kept where the frame is loud enough and
    clearly periodic; enough for a median over a few seconds of speech.
    """
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    lag_min, lag_max = int(rate / 400), int(rate / 60)
    if len(pcm) < frame + lag_max:
        return None
    starts = np.arange(0, len(pcm) - frame, hop)
    frames = np.stack([pcm[s : s + frame] for s in starts]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.sqrt((frames**2).mean(axis=1))
    loud = frames[energy > 0.3 * np.percentile(energy, 90)]
    if len(loud) == 0:
        return None
    spectrum = np.fft.rfft(loud, n=2 * frame, axis=1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : lag_max + 1]
    acf /= np.maximum(acf[:, :1], 1e-12)
    lags = lag_min + np.argmax(acf[:, lag_min : lag_max + 1], axis=1)
    strength = acf[np.arange(len(lags)), lags]
    voiced = lags[strength > 0.5]
    if len(voiced) < 5:
        return None
    return float(rate / np.median(voiced))


def speaking_rate(pcm: np.ndarray, rate: int) -> float | None:
    """Syllable-like energy peaks per second of speech, or None when too little speech."""
    hop = int(0.01 * rate)
    n = len(pcm) // hop
    if n < 50:
        return None
    envelope = np.sqrt((pcm[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))
    envelope = np.convolve(envelope, np.hanning(9) / np.hanning(9).sum(), mode="same")
    threshold = 0.25 * np.percentile(envelope, 95)
    speech = envelope > threshold
    # Time speaking includes the short dips between syllables; only pauses
    # of 250 ms or more are left out.
    seconds = _bridge_gaps(speech, 25).sum() / 100
    if seconds < 0.5:
        return None
    peaks = (envelope[1:-1] > envelope[:-2]) & (envelope[1:-1] >= envelope[2:]) & speech[1:-1]
    # Merge peaks closer than 100 ms: one syllable, not two.
    positions = np.flatnonzero(peaks)
    count = 1 + int(np.sum(np.diff(positions) > 10)) if len(positions) else 0
    return count / seconds


def _bridge_gaps(mask: np.ndarray, longest: int) -> np.ndarray:
    """``mask`` with runs of False shorter than ``longest`` between Trues set to True."""
    bridged = mask.copy()
    true = np.flatnonzero(mask)
    for start, end in zip(true[:-1], true[1:], strict=True):
        if 1 < end - start < longest:
            bridged[start:end] = True
    return bridged


def style_matching(reference_pitch: float | None, reference_rate: float | None, own_pitch: float, own_rate: float) -> Style:
    """The style that moves the bundled voice towards a measured reference."""
    pitch = 1.0 if reference_pitch is None else reference_pitch / own_pitch
    pace = 1.0 if reference_rate is None else reference_rate / own_rate
    return Style(pitch=float(np.clip(pitch, 0.6, 1.9)), pace=float(np.clip(pace, 0.7, 1.4)))
