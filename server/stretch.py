"""Tempo without pitch: WSOLA time-stretching of one continuous 24 kHz stream.

``speed`` 2 plays twice as fast, 0.5 half as fast, and the voice keeps its
pitch. WSOLA (waveform-similarity overlap-add, Verhelst & Roelands 1993)
cuts the input into 30 ms Hann-windowed frames and lays them 15 ms apart in
the output, taking each frame from around ``speed`` times further along the
input; within ±10 ms of that spot it takes the one that best continues the
frame before it (normalised cross-correlation), so pitch periods line up and
nothing clicks or buzzes. It works on whatever audio an engine makes, so
every engine honours OpenAI's ``speed``.

The stretch is streamed: ``process(chunk)`` returns what the chunk completes
(about 40 ms of look-ahead stays inside), ``process(empty, last=True)`` the
rest, and the output has ``round(input / speed)`` samples in all. Chunk
sizes never change the result. It is CPU work for its owner's thread, not
the event loop.
"""

from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE

MIN_SPEED, MAX_SPEED = 0.25, 4.0
FRAME = SAMPLE_RATE * 30 // 1000
HOP = FRAME // 2
TOLERANCE = SAMPLE_RATE * 10 // 1000
# A periodic Hann window: at half-overlap its copies sum to exactly one.
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)
# The first frame has no frame before it to cross-fade from: no fade-in.
_FIRST_WINDOW = np.concatenate([np.ones(HOP, np.float32), _WINDOW[HOP:]])


class TimeStretch:
    def __init__(self, speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, not {speed}")
        self.speed = speed
        self._input = np.zeros(0, np.float32)
        self._offset = 0  # absolute index of self._input[0]
        self._received = 0
        self._frame = 0  # index of the next output frame
        self._previous: int | None = None  # where the last frame was taken from
        self._overlap = np.zeros(FRAME, np.float32)  # output from the next frame's start on
        self._emitted = 0
        self._finished = False

    @property
    def passthrough(self) -> bool:
        return self.speed == 1.0

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._finished:
            raise RuntimeError("the stretch is finished")
        samples = np.asarray(pcm, dtype=np.float32)
        self._finished = last
        if self.passthrough:
            return samples
        self._input = np.concatenate([self._input, samples])
        self._received += len(samples)
        out = []
        while self._ready():
            out.append(self._step())
        if last:
            # The input ends here: later frames read zeros, up to the stretched length.
            total = round(self._received / self.speed)
            while self._emitted < total:
                out.append(self._step())
            if self._emitted > total:
                out[-1] = out[-1][: len(out[-1]) - (self._emitted - total)]
                self._emitted = total
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _ready(self) -> bool:
        """Whether the next frame's input has all arrived (and its output is surely inside the stretch)."""
        nominal = round(self._frame * HOP * self.speed)
        needed = nominal + TOLERANCE + FRAME
        if self._previous is not None:
            needed = max(needed, self._previous + HOP + FRAME)
        return needed <= self._received and self._emitted + HOP <= self._received / self.speed - 1

    def _step(self) -> np.ndarray:
        """One frame overlap-added: the ``HOP`` output samples it completes."""
        nominal = round(self._frame * HOP * self.speed)
        start = self._best_start(nominal)
        window = _FIRST_WINDOW if self._previous is None else _WINDOW
        self._overlap += window * self._take(start, FRAME)
        done = self._overlap[:HOP].copy()
        self._overlap = np.concatenate([self._overlap[HOP:], np.zeros(HOP, np.float32)])
        self._previous = start
        self._frame += 1
        self._emitted += HOP
        self._drop_before(min(round(self._frame * HOP * self.speed) - TOLERANCE, start + HOP))
        return done

    def _best_start(self, nominal: int) -> int:
        """The input position near ``nominal`` whose frame best continues the previous one."""
        if self._previous is None:
            return 0
        low = max(0, nominal - TOLERANCE)
        high = nominal + TOLERANCE
        template = self._take(self._previous + HOP, FRAME)
        region = self._take(low, high - low + FRAME)
        scores = np.correlate(region, template, mode="valid")
        energy = np.cumsum(np.concatenate([[0.0], region.astype(np.float64) ** 2]))
        norms = np.sqrt(np.maximum(energy[FRAME:] - energy[:-FRAME], 1e-12))
        return low + int(np.argmax(scores / norms))

    def _take(self, start: int, length: int) -> np.ndarray:
        """Input samples ``start`` .. ``start + length`` (absolute), zeros past what has arrived."""
        begin = start - self._offset
        piece = self._input[begin : begin + length]
        if len(piece) < length:
            piece = np.concatenate([piece, np.zeros(length - len(piece), np.float32)])
        return piece

    def _drop_before(self, position: int) -> None:
        cut = max(0, position - self._offset)
        if cut:
            self._input = self._input[cut:]
            self._offset += cut
