"""The stateful codec's round decode as CUDA graphs, one per (batch bucket, frames bucket).

A decode call of ``CodecBatch`` is hundreds of small kernels (927 dispatched
ops on the tiny test codec: the attention layers, the upsampling convolutions,
the vocoder's blocks, the state's gathers and copies), the same count for one
2-frame chunk as for 64 12-frame ones: launched one by one
they, not the arithmetic, set the cost of a stream's first chunk (issue 16's
"first codec decode"). ``decode_padded`` has static shapes and no host syncs,
so ``GraphedCodecBatch`` captures it per shape and replays it:

* a round's rows are padded to the next batch bucket (1, 2, 4, ... up to the
  batch's rows) with the scratch row, and its chunks to the next frames bucket
  (2, 4, 8, 12: the chunk schedule's sizes; a last chunk rounds up), each
  row's own length passed as ``frames`` so its state is cut where its codes
  end;
* inputs go into the shape's fixed buffers, the replay writes the audio into
  the shape's fixed output, and one copy brings it to the host;
* a round larger than every shape (a chunk over 12 frames) decodes eagerly,
  and so does every round if a capture fails at start (it is logged).

Every graph shares one memory pool, the model's decode batch's: they run one
at a time, on the model's thread, and keep nothing between replays, so the
pool is as large as the largest of them, not their sum. On a CPU, or with
``graphs`` off, the padded path runs eagerly, which is how the tests check it
against the unpadded decode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .codec import CodecBatch
from .graphs import BATCH_BUCKETS, Replay, bucket, buckets

logger = logging.getLogger("minestream.qwen")

FRAME_BUCKETS = (2, 4, 8, 12)
"""Chunk lengths a graph is captured for: the chunk schedule's sizes (2, 4, 8, then 12 frames)."""


@dataclass
class _Shape:
    """One captured shape's fixed inputs and output."""

    rows: torch.Tensor  # (B,) long
    codes: torch.Tensor  # (B, T, Q) long
    frames: torch.Tensor  # (B,) long: each row's valid frames
    audio: torch.Tensor  # (B, T * samples per frame)
    replay: Replay | None = None


class GraphedCodecBatch(CodecBatch):
    """``CodecBatch`` whose ``decode`` pads each round to a captured shape and replays it."""

    def __init__(
        self, decoder: Any, rows: int, *, graphs: bool = True, batch_buckets: tuple[int, ...] | None = None,
        frame_buckets: tuple[int, ...] = FRAME_BUCKETS,
    ) -> None:  # fmt: skip
        super().__init__(decoder, rows)
        self.graphs = graphs
        self.batch_buckets = batch_buckets or buckets(BATCH_BUCKETS, rows)
        """Round sizes captured, ascending; a round pads to the next (a bucket may exceed ``rows``: padding repeats the scratch row)."""
        self.frame_buckets = frame_buckets
        self.padded_rounds = 0
        """Rounds decoded through a captured shape (the others ran eagerly)."""
        self._shapes: dict[tuple[int, int], _Shape] = {}
        self._pool: Any = None

    @property
    def graph_count(self) -> int:
        return sum(shape.replay is not None and shape.replay.graph is not None for shape in self._shapes.values())

    @torch.inference_mode()
    def capture(self, pool: Any = None) -> None:
        """Every (batch bucket, frames bucket) shape now, before any stream: warm-ups and captures decode the scratch row only.

        ``pool``: a memory pool to share (the decode batch's: one model's graphs replay one at a time), else a new one.
        """
        if self.device.type == "cuda" and self._pool is None:
            self._pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        try:
            for batch in self.batch_buckets:
                for frames in self.frame_buckets:
                    self._shape(batch, frames)
        except Exception:  # the model still serves: its codec decodes eagerly, as without graphs
            logger.exception("codec graph capture failed; the codec decodes eagerly")
            self.graphs, self._shapes = False, {}
        finally:
            self._reset(self.scratch_row)

    @torch.inference_mode()
    def decode(self, rows: Sequence[int], chunks: Sequence[torch.Tensor]) -> list[np.ndarray]:
        lengths = [len(chunk) for chunk in chunks]
        if not self.graphs or len(rows) != len(chunks) or not rows or max(lengths) == 0:
            return super().decode(rows, chunks)
        if len(rows) > self.batch_buckets[-1] or max(lengths) > self.frame_buckets[-1]:
            return super().decode(rows, chunks)  # beyond every shape: eagerly, as it is
        shape = self._shape(bucket(self.batch_buckets, len(rows)), bucket(self.frame_buckets, max(lengths)))
        self._fill(shape, rows, chunks, lengths)
        assert shape.replay is not None
        shape.replay()
        self.padded_rounds += 1
        audio = shape.audio[: len(rows)].to("cpu", torch.float32, copy=True).numpy()  # the buffer is the next replay's
        return [audio[i, : n * self.samples_per_frame] for i, n in enumerate(lengths)]

    def _fill(self, shape: _Shape, rows: Sequence[int], chunks: Sequence[torch.Tensor], lengths: list[int]) -> None:
        """The round into the shape's buffers; padding rows are the scratch row, decoding zeros at full length."""
        count, frames = len(rows), shape.codes.shape[1]
        row_index = torch.full((shape.rows.shape[0],), self.scratch_row, dtype=torch.long)
        row_index[:count] = torch.tensor(list(rows))
        valid = torch.full_like(row_index, frames)
        valid[:count] = torch.tensor(lengths)
        codes = torch.zeros(shape.codes.shape, dtype=torch.long)
        for i, chunk in enumerate(chunks):
            codes[i, : lengths[i]] = chunk.to("cpu", torch.long)
        shape.rows.copy_(row_index, non_blocking=True)
        shape.frames.copy_(valid, non_blocking=True)
        shape.codes.copy_(codes, non_blocking=True)

    def _shape(self, batch: int, frames: int) -> _Shape:
        shape = self._shapes.get((batch, frames))
        if shape is None:
            device, long = self.device, torch.long
            shape = _Shape(
                rows=torch.full((batch,), self.scratch_row, device=device, dtype=long),
                codes=torch.zeros(batch, frames, self.groups, device=device, dtype=long),
                frames=torch.full((batch,), frames, device=device, dtype=long),
                audio=torch.zeros(batch, frames * self.samples_per_frame, device=self.device, dtype=self.dtype),
            )
            shape.replay = Replay(lambda: self._decode_into(shape), self.device, graphs=self.graphs, pool=self._pool)
            self._shapes[(batch, frames)] = shape
        return shape

    def _decode_into(self, shape: _Shape) -> None:
        with torch.inference_mode():
            shape.audio.copy_(self.decode_padded(shape.rows, shape.codes, shape.frames))
