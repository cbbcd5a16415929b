"""A job: one segment of speech a session asks of a Qwen model, as data.

The engine makes a job on the event loop and hands it to the scheduler of the
model that serves its voice; the model's thread turns it into a stream (a
prompt, a decode row, a codec row) when a row is free. A job says what to
say and how; it holds no code of the engine's: the thread's runtime knows how
to build a prompt from it. Its audio comes back through its ``Mailbox``.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from ..base import Voice
from ..mailbox import Mailbox


@dataclass
class Job:
    text: str
    voice: Voice
    language: str
    mailbox: Mailbox[np.ndarray]
    due: float
    """``time.monotonic()`` by which the first audio is needed: the waiting line's order."""
    owner: Hashable = None
    """The session: jobs that are due take turns by owner."""
    max_frames: int = 1500
    first_chunk: int = 2
    """Frames in the first chunk; later chunks double up to ``chunk``."""
    chunk: int = 12
    seed: int | None = None
    """The draws' seed (None: a random one)."""
    marks: dict[str, float] = field(default_factory=lambda: {"submitted": time.perf_counter()})
    """When each phase before the first audio ended (perf_counter): submitted, admitted, prompt,
    prefill, frames (the first chunk's frames are made), decoded (its audio is posted)."""

    @property
    def kind(self) -> str:
        """Which model serves it: Base clones from a reference, VoiceDesign designs."""
        return "design" if self.voice.reference is None else "base"

    @property
    def cancelled(self) -> bool:
        return self.mailbox.closed

    def mark(self, phase: str) -> None:
        self.marks.setdefault(phase, time.perf_counter())
