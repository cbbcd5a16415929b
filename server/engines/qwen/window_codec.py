"""Frames to audio: the round's codec interface, and today's codec behind it (windows with left context).

The scheduler hands every chunk that is due in a round to one call,
``RoundCodec.decode(rows, chunks)``, so a codec that decodes them together
(the batched, stateful ``codec.CodecBatch``) replaces this one by changing the
object the runtime makes, nothing else. A stream takes a codec row when it is
admitted (with its history: an in-context clone decodes behind its reference
codes, as upstream does) and gives it back when it ends.

``WindowCodec`` is today's decoder path: each stream is a ``CodecStream`` that
re-decodes up to 72 frames of left context in front of every chunk, one
decoder call per stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

SAMPLES_PER_FRAME = 1920
DEFAULT_LEFT_CONTEXT = 72  # the codec decoder's attention window, in frames


class RoundCodec(Protocol):
    """What the scheduler needs from a codec: rows of streams, and one decode call per round."""

    def admit(self, history: torch.Tensor | None = None) -> int:
        """A row for a new stream; ``history`` (T, 16) codes are decoded behind it, never emitted."""
        ...

    def release(self, row: int) -> None: ...

    def decode(self, rows: Sequence[int], chunks: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Each row's next chunk of (n, 16) codes to float32 audio (n * 1920 samples)."""
        ...


class CodecStream:
    """Decodes a growing code sequence chunk by chunk.

    The 12 Hz decoder is causal: decoding frames [s-L, e) and keeping the
    samples of [s, e) reproduces a one-shot decode exactly while L covers its
    receptive field (the attention window is 72 frames; shorter context can
    click at seams).
    """

    def __init__(self, decoder: Any, history: torch.Tensor | None, left_context: int = DEFAULT_LEFT_CONTEXT) -> None:
        self.decoder = decoder
        self.left_context = left_context
        self.codes: list[torch.Tensor] = [] if history is None else list(history)
        self.emitted = len(self.codes)

    @property
    def pending(self) -> int:
        return len(self.codes) - self.emitted

    def push(self, frames: Sequence[torch.Tensor]) -> None:
        self.codes.extend(frames)

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        end = len(self.codes)
        if end == self.emitted:
            return np.zeros(0, dtype=np.float32)
        start = max(0, self.emitted - self.left_context)
        window = torch.stack(self.codes[start:end]).clamp(min=0)  # (T, Q)
        wav = self.decoder(window.T.unsqueeze(0).to(self.decoder.device))[0, 0]
        keep = wav[(self.emitted - start) * SAMPLES_PER_FRAME :]
        self.emitted = end
        return np.asarray(keep.float().cpu().numpy())


class WindowCodec:
    """``RoundCodec`` over one ``CodecStream`` per row (one decoder call per due stream)."""

    def __init__(self, decoder: Any, left_context: int = DEFAULT_LEFT_CONTEXT) -> None:
        self.decoder = decoder
        self.left_context = left_context
        self._streams: dict[int, CodecStream] = {}
        self._next = 0

    def admit(self, history: torch.Tensor | None = None) -> int:
        row, self._next = self._next, self._next + 1
        self._streams[row] = CodecStream(self.decoder, history, self.left_context)
        return row

    def release(self, row: int) -> None:
        del self._streams[row]

    def decode(self, rows: Sequence[int], chunks: Sequence[torch.Tensor]) -> list[np.ndarray]:
        out = []
        for row, chunk in zip(rows, chunks, strict=True):
            stream = self._streams[row]
            stream.push(list(chunk))
            out.append(stream.flush())
        return out

    @torch.inference_mode()
    def warm(self, longest: int) -> None:
        """Decode every window length up to ``longest`` frames once, so no stream meets a cold shape.

        On a GPU each new length costs cuDNN a plan build (up to ~1 s).
        """
        groups = self.decoder.config.num_quantizers
        for frames in range(1, longest + 1):
            self.decoder(torch.zeros(1, groups, frames, dtype=torch.long, device=self.decoder.device))
