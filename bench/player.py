"""A simulated listener: a jitter buffer, then playback at real speed.

Playback starts ``jitter_ms`` after the first audio arrives. From then on the
player consumes audio at real time; whenever a chunk arrives after everything
before it has been played, the player ran dry: one underrun event, and the
gap is starved time. Playback resumes as soon as the late chunk arrives (no
re-buffering), which is what a low-latency player does and what keeps the
count honest: one late chunk is one event, not a cascade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEARD_DBFS = -40.0
_HEARD_FLOAT = 10 ** (HEARD_DBFS / 20)


def first_loud(pcm: np.ndarray) -> int | None:
    """Index of the first sample above -40 dBFS (int16 or float PCM), or None."""
    threshold = _HEARD_FLOAT * 32768 if pcm.dtype == np.int16 else _HEARD_FLOAT
    hits = np.flatnonzero(np.abs(pcm) > threshold)
    return int(hits[0]) if len(hits) else None


@dataclass
class Player:
    sample_rate: int
    jitter_ms: float = 100.0
    start: float | None = None
    """When playback begins (first arrival + jitter), perf_counter seconds."""
    end: float | None = None
    """When the audio received so far finishes playing."""
    first_arrival: float | None = None
    last_arrival: float | None = None
    heard: float | None = None
    """When the first sample above -40 dBFS is played (with no jitter buffer)."""
    samples: int = 0
    underruns: int = 0
    starved_s: float = 0.0
    _dry_end: float = 0.0

    def feed(self, received: float, pcm: np.ndarray) -> None:
        n = len(pcm)
        if n == 0:
            return
        duration = n / self.sample_rate
        if self.first_arrival is None:
            self.first_arrival = received
            self.start = received + self.jitter_ms / 1000
            self.end = self.start
            # The as-heard clock: playback from the first arrival, no buffer.
            self._dry_end = received
        assert self.end is not None
        if received > self.end and self.samples:
            self.underruns += 1
            self.starved_s += received - self.end
            self.end = received
        if self.heard is None:
            self._hear(received, pcm)
        self._dry_end = max(self._dry_end, received) + duration
        self.last_arrival = received
        self.end += duration
        self.samples += n

    def _hear(self, received: float, pcm: np.ndarray) -> None:
        index = first_loud(pcm)
        if index is not None:
            self.heard = max(self._dry_end, received) + index / self.sample_rate

    @property
    def audio_s(self) -> float:
        return self.samples / self.sample_rate
