"""CUDA graphs for the decode batch: one captured step per (batch bucket, key bucket).

A decode step (the code predictor's 15-codebook loop, one talker step,
sampling, the state updates) is thousands of small kernels; launched one by one
they cost more than they compute. Captured once as a CUDA graph, a step is one
replay. A graph has fixed shapes and addresses, so the batch captures one per
shape it can meet: the number of rows stepped, rounded up to a bucket (1, 2,
4, ... 64), times the number of cached positions attended to, rounded up to a
key bucket (256, 512, 1024, 2048): short streams do not read a full row's
cache. Admission's prefill is captured the same way, per (admission bucket,
prompt-length bucket): the round's prompts are right-padded to the next
length bucket (32, 64, ... 1024) and their count to the next batch bucket (the
extra entries repeat the first prompt into its own row, writing the same
values twice), up to ``PREFILL_GRAPH_POSITIONS`` padded positions; a larger
prefill is compute-bound anyway and runs eagerly. On a CPU the very same
functions run eagerly, which is how the tests check them against upstream
without a GPU.

Every graph of a batch shares one memory pool: graphs run one at a time and
keep nothing between replays (their results go to the batch's own tensors).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
KEY_BUCKETS = (256, 512, 1024, 2048)
PREFILL_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024)
PREFILL_GRAPH_POSITIONS = 4096
"""Padded positions (prompts x length bucket) of the largest prefill graph: one typical burst of arrivals."""


def buckets(sizes: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """``sizes`` below ``limit``, then ``limit`` itself: every count up to ``limit`` has a bucket."""
    return tuple(s for s in sizes if s < limit) + (limit,)


def bucket(sizes: tuple[int, ...], n: int) -> int:
    """The smallest of ``sizes`` (ascending) that holds ``n``."""
    index = bisect.bisect_left(sizes, n)
    if index == len(sizes):
        raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")
    return sizes[index]


@functools.cache
def _warm_up_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device: a new stream per graph would cycle torch's stream pool (and a cuBLAS
    workspace for each) and could hand a model's runtime the same stream as the other model's."""
    return torch.cuda.Stream(device)


class Replay:
    """``fn`` captured as a CUDA graph (into ``pool``) on a GPU; called as is elsewhere or when ``graphs`` is off."""

    def __init__(self, fn: Callable[[], None], device: torch.device, *, graphs: bool, pool: Any = None) -> None:
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        if graphs and device.type == "cuda":
            side = _warm_up_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy inits and cuBLAS workspaces happen outside the graph
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the other model's thread keeps launching work meanwhile
            with no_collection(), torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                fn()

    def __call__(self) -> None:
        if self.graph is None:
            self.fn()
        else:
            self.graph.replay()


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """No garbage collection during a capture, in any thread: batches and their graphs are freed only by the
    cycle collector (a replay's function refers back to its batch), and a graph destroyed mid-capture breaks
    the capture. (torch no longer collects on entering ``torch.cuda.graph``; a collection there per graph
    would cost seconds of a start.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
