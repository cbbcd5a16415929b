"""Turn decoded reference audio into the audio a voice is cloned from.

``prepare_reference`` takes float32 mono 24 kHz PCM (what ``server.ingest``
produces), trims leading and trailing silence, keeps the best 15-20 s of an
over-long recording, checks it is fit to clone from and normalises its level.
Everything it rejects raises ``UnsupportedAudio`` with a message the person who
recorded it can act on.

Choice for over-long references: we keep the best window rather than raise
``LimitExceeded``. The person spoke for too long, not wrongly; cloning needs
only 10-20 s, so dropping the rest loses nothing. (The decoder still refuses
audio past a hard cap, 2x ``max_seconds``, so an endless upload stops early.)
"""

from __future__ import annotations

import numpy as np

from server.audio import SAMPLE_RATE
from server.errors import UnsupportedAudio

FRAME = SAMPLE_RATE // 50  # 20 ms analysis frames
SILENT_DBFS = -50.0  # loudest frame below this: nothing was recorded
SPEECH_BELOW_PEAK_DB = 35.0  # frames this far under the loud frames are pauses
MIN_SPEECH_S = 1.0
KEEP_MIN_S, KEEP_MAX_S = 15.0, 20.0
EDGE_PAD_S = 0.15  # keep a little room around speech so onsets are not cut
CLIP_LEVEL = 0.985
CLIP_FRACTION = 0.002  # >0.2% of speech samples pinned at full scale
TARGET_RMS_DBFS = -20.0
PEAK_CEILING = 0.95


def prepare_reference(pcm: np.ndarray, *, max_seconds: float = 30.0) -> np.ndarray:
    """Trim, check and level-normalise a reference; float32 mono 24 kHz out."""
    audio = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise UnsupportedAudio("The recording is empty: no audio was received. Record again.")
    if not np.all(np.isfinite(audio)):
        raise UnsupportedAudio("The recording contains invalid samples; record it again.")
    db = frame_dbfs(audio)
    if db.max() < SILENT_DBFS:
        raise UnsupportedAudio(
            "The recording is silent. Check that the right microphone is selected "
            "and not muted, then record again."
        )
    speech = db > max(SILENT_DBFS, _loud_level(db) - SPEECH_BELOW_PEAK_DB)
    speech_s = speech.sum() * FRAME / SAMPLE_RATE
    if speech_s < MIN_SPEECH_S:
        raise UnsupportedAudio(
            f"Only {speech_s:.1f} s of speech was heard; at least {MIN_SPEECH_S:.0f} s is "
            "needed. Record 5-20 seconds of clear speech."
        )
    start, end = _speech_bounds(speech)
    if (end - start) * FRAME > max_seconds * SAMPLE_RATE:
        start, end = best_window(speech, start, end, max_seconds)
    clip = audio[start * FRAME : end * FRAME]
    _check_clipping(clip, speech[start:end])
    return _normalise(clip, db[start:end][speech[start:end]])


def frame_dbfs(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 20 ms frame in dBFS (the last partial frame padded)."""
    n = -(-audio.size // FRAME)
    frames = np.zeros(n * FRAME, dtype=np.float32)
    frames[: audio.size] = audio
    rms = np.sqrt(np.mean(np.square(frames.reshape(n, FRAME), dtype=np.float64), axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def _loud_level(db: np.ndarray) -> float:
    # The 95th percentile rather than the max, so one click does not make all
    # the speech look like background.
    return float(np.percentile(db, 95))


def _speech_bounds(speech: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(speech)
    pad = round(EDGE_PAD_S * SAMPLE_RATE / FRAME)
    return max(0, int(idx[0]) - pad), min(speech.size, int(idx[-1]) + 1 + pad)


def best_window(speech: np.ndarray, start: int, end: int, max_seconds: float) -> tuple[int, int]:
    """The 15-20 s span (in frames) with the most speech, cut at pauses."""
    longest = round(min(KEEP_MAX_S, max_seconds) * SAMPLE_RATE / FRAME)
    shortest = round(min(KEEP_MIN_S, max_seconds) * SAMPLE_RATE / FRAME)
    mask = speech[start:end].astype(np.int32)
    counts = np.convolve(mask, np.ones(longest, dtype=np.int32), mode="valid")
    # Prefer starting in a pause so the first word is whole.
    starts = np.arange(counts.size)
    score = counts * 2 + (mask[: counts.size] == 0)
    first = int(starts[np.argmax(score)])
    # End at the last pause between 15 and 20 s in, again so no word is cut.
    tail = mask[first + shortest : first + longest]
    pauses = np.flatnonzero(tail == 0)
    last = first + shortest + int(pauses[-1]) + 1 if pauses.size else first + longest
    return start + first, start + last


def _check_clipping(audio: np.ndarray, speech: np.ndarray) -> None:
    speech_samples = max(int(speech.sum()) * FRAME, 1)
    pinned = int(np.count_nonzero(np.abs(audio) >= CLIP_LEVEL))
    if pinned > CLIP_FRACTION * speech_samples:
        raise UnsupportedAudio(
            "The recording is clipped (too loud, distorted). Move back from the "
            "microphone or lower its input gain, then record again."
        )


def _normalise(audio: np.ndarray, speech_db: np.ndarray) -> np.ndarray:
    # Mean power over speech frames only, so pauses do not pull the level down.
    speech_rms = np.sqrt(np.mean(np.power(10.0, speech_db / 10.0)))
    gain = 10.0 ** (TARGET_RMS_DBFS / 20.0) / max(speech_rms, 1e-6)
    peak = float(np.max(np.abs(audio)))
    gain = min(gain, PEAK_CEILING / max(peak, 1e-6))
    return (audio * np.float32(gain)).astype(np.float32)
