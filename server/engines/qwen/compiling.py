"""``torch.compile`` for the decode step's parts: the code predictor's loop, the talker step.

Under CUDA graphs a step no longer pays for launching kernels one by one from
Python, but it still runs thousands of small ones: the elementwise work
between matrix products (norms, rotary, residual adds, activations, the
sampler's masks). Inductor fuses that work into a few generated kernels
(Triton on a GPU, C++ on a CPU), and the batch's graphs capture those kernels
like any others: the compiled functions are traced at start, before capture.

Every compiled function here is traced with ``fullgraph=True`` (a graph break
would put host work inside a captured step) and keeps the batch's sizes
symbolic after its first trace, so a handful of traces cover every batch and
key bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

BACKEND_VARIABLE = "MINESTREAM_COMPILE_BACKEND"
"""The environment variable that names ``torch.compile``'s backend: ``inductor`` (the default: generated,
fused kernels) or ``aot_eager`` (the same traced graphs run op by op, in seconds instead of a minute of
compiling on a CPU: how the CPU tests check the traced code)."""

F = TypeVar("F", bound=Callable[..., Any])


def compiled(fn: F, backend: str | None = None) -> F:
    """``fn`` under ``torch.compile`` with the configured backend, whole or not at all."""
    chosen = backend or os.environ.get(BACKEND_VARIABLE) or "inductor"
    return cast(F, torch.compile(fn, backend=chosen, fullgraph=True))
