"""One thread per model: it admits waiting jobs into decode rows and advances every row once a round.

Sessions never touch a model. The engine puts a ``Job`` in the scheduler's
waiting line (the shared ``DeadlineQueue``: earliest deadline first, a fair
turn per session among jobs already due) and reads the job's ``Mailbox``. The
model's thread runs rounds:

1. drop the streams whose listener left (their mailbox is closed): the rows
   are free for this round's admissions;
2. admit: while rows are free, take the next job, build its prompt, and
   prefill the round's new streams together, up to a budget of prompt
   positions, so a burst of arrivals reaches first audio over a few rounds
   without stalling the streams already playing;
3. step: one pass of the decode batch gives every stream its next frame;
4. decode: every stream whose chunk is due (2 frames first, doubling up to 12)
   goes to the codec in one call, and the audio goes to the mailboxes;
5. finish the streams that ended (EOS or the frame cap) and compact the rows.

A stream that finds no free row waits in the line; there is no slower path
beside the batch. When the other model wants the memory this one holds (one
model resident at a time), the scheduler stops admitting, lets its streams
finish, and hands the model back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import EngineError, MineStreamError, Unavailable
from ..queue import DeadlineQueue
from .batch import Admission
from .job import Job
from .manager import ModelManager
from .runtime import ModelRuntime

logger = logging.getLogger("minestream.qwen")

DEFAULT_PREFILL_POSITIONS = 4096
"""Prompt positions prefilled per round (at least one prompt): ~20 typical prompts."""


@dataclass
class _Stream:
    """A job that holds a decode row: its frames on their way to the codec."""

    job: Job
    row: int
    codec_row: int
    next_chunk: int
    pending: list[np.ndarray] = field(default_factory=list)
    finished: bool = False


@dataclass
class RoundStats:
    """Recent rounds, for the benchmark: wall seconds of the whole round and of its codec call."""

    rounds: int = 0
    round_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    codec_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    prefill_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def clear(self) -> None:
        self.round_s.clear()
        self.codec_s.clear()
        self.prefill_s.clear()


class Scheduler:
    def __init__(self, kind: str, manager: ModelManager, *, prefill_positions: int = DEFAULT_PREFILL_POSITIONS) -> None:
        self.kind = kind
        self.manager = manager
        self.prefill_positions = prefill_positions
        self.queue: DeadlineQueue[Job] = DeadlineQueue(dead=lambda job: job.cancelled)
        self.stats = RoundStats()
        self._streams: dict[int, _Stream] = {}
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._unserved: list[Job] = []

    @property
    def depth(self) -> int:
        return len(self.queue)

    @property
    def active(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"qwen-{self.kind}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.queue.push(job, due=job.due, owner=job.owner)

    def stop(self) -> None:
        """Stop admitting and end the thread's loop soon (does not wait)."""
        self._closing.set()
        self._unserved = self.queue.close()

    def close(self) -> None:
        """Stop the thread and wait for it; every job not finished ends with ``Unavailable``."""
        if not self._closing.is_set():
            self.stop()
        unserved, self._unserved = self._unserved, []
        if self._thread is not None:
            self._thread.join(timeout=30)
        for job in unserved + [s.job for s in self._streams.values()]:
            job.mailbox.fail(Unavailable("the engine shut down"))
        self._streams.clear()

    def _run(self) -> None:
        while not self._closing.is_set() and self.queue.wait():
            try:
                runtime = self.manager.acquire(self.kind)
            except Unavailable:
                return
            try:
                with runtime.context():
                    self._serve(runtime)
            finally:
                self.manager.release(self.kind)
                # Waiting for the next job must not keep the model alive: in one-model mode the other
                # kind may unload it meanwhile, and its weights, rows and graphs must go with it.
                del runtime

    def _serve(self, rt: ModelRuntime) -> None:
        """One turn with the model: run until nothing is active and nothing may be admitted.

        The jobs already waiting when the turn begins are admitted even if the
        other model wants the memory: yielding at once would hand the model
        back and forth without either side serving anyone.
        """
        turn_start = True
        while not self._closing.is_set():
            self._drop_cancelled(rt)
            self._admit(rt, turn_start=turn_start)
            turn_start = False
            if not self._streams:
                if not len(self.queue) or self.manager.should_yield(self.kind):
                    return
                continue
            try:
                self._round(rt)
            except Exception as exc:  # the batch's state is suspect: every stream in it fails, not the thread
                logger.exception("qwen %s round failed", self.kind)
                for stream in list(self._streams.values()):
                    self._end(rt, stream, EngineError(f"synthesis failed: {exc}"))

    # -- admission -----------------------------------------------------------------------------

    def _admit(self, rt: ModelRuntime, *, turn_start: bool) -> None:
        chosen: list[tuple[Job, Admission]] = []
        budget = self.prefill_positions
        while len(chosen) < rt.batch.free_rows and budget > 0 and (turn_start or not self.manager.should_yield(self.kind)):
            job = self.queue.pop(block=False)
            if job is None:
                break
            job.mark("admitted")
            try:
                prompt = rt.prompts.build(job.voice, job.text, job.language)
                rt.batch.check(prompt)
            except Exception as exc:
                self._fail(job, exc, "prompt")
                continue
            job.mark("prompt")
            # upstream's max_new_tokens counts the final (unconsumed) token too
            cap = int(prompt.talker_kwargs.get("max_new_tokens") or job.max_frames + 1) - 1
            chosen.append((job, Admission(prompt, max(1, min(job.max_frames, cap)), job.seed)))
            budget -= prompt.length
        if not chosen:
            return
        started = time.perf_counter()
        try:
            rows, ended = rt.batch.admit([a for _, a in chosen])
        except Exception as exc:
            for job, _ in chosen:
                self._fail(job, exc, "prefill")
            return
        self.stats.prefill_s.append(time.perf_counter() - started)
        for (job, admission), row, end in zip(chosen, rows, ended, strict=True):
            job.mark("prefill")  # its first token is sampled: the device is done
            stream = _Stream(job, row, rt.codec.admit(admission.prompt.ref_code), job.first_chunk)
            self._streams[row] = stream
            if end:  # EOS before any frame
                self._end(rt, stream)

    def _fail(self, job: Job, exc: Exception, phase: str) -> None:
        if not isinstance(exc, MineStreamError):
            logger.exception("qwen %s %s failed", self.kind, phase, exc_info=exc)
            exc = EngineError(f"synthesis failed: {exc}")
        job.mailbox.fail(exc)

    # -- rounds --------------------------------------------------------------------------------

    def _round(self, rt: ModelRuntime) -> None:
        started = time.perf_counter()
        out = rt.batch.step()
        for row, stream in self._streams.items():
            stream.pending.append(out[row, :-1])
            stream.finished = bool(out[row, -1])
        due = [s for s in self._streams.values() if len(s.pending) >= s.next_chunk or (s.finished and s.pending)]
        for stream in due:
            stream.job.mark("frames")
        decoding = time.perf_counter()
        audio = self._decode(rt, due)
        self.stats.codec_s.append(time.perf_counter() - decoding)
        for stream, chunk in zip(due, audio, strict=True):
            stream.job.mailbox.put(chunk)
            stream.job.mark("decoded")
            # Chunks double up to the full size: each one is generated in less time than
            # the audio already sent lasts, so a small first chunk does not starve the player.
            stream.next_chunk = min(stream.job.chunk, 2 * stream.next_chunk)
        for stream in [s for s in self._streams.values() if s.finished]:
            self._end(rt, stream)
        for src, dst in rt.batch.compact():
            moved = self._streams.pop(src)
            moved.row = dst
            self._streams[dst] = moved
        self.stats.rounds += 1
        self.stats.round_s.append(time.perf_counter() - started)

    @staticmethod
    def _decode(rt: ModelRuntime, due: list[_Stream]) -> list[Any]:
        """Every due chunk of the round in one codec call (the one place a batched codec plugs in)."""
        if not due:
            return []
        chunks = [torch.from_numpy(np.stack(s.pending)) for s in due]
        for stream in due:
            stream.pending = []
        return rt.codec.decode([s.codec_row for s in due], chunks)

    def _drop_cancelled(self, rt: ModelRuntime) -> None:
        for stream in [s for s in self._streams.values() if s.job.cancelled]:
            self._end(rt, stream)

    def _end(self, rt: ModelRuntime, stream: _Stream, error: Exception | None = None) -> None:
        """The stream is over: its rows are free, its listener told (unless it left)."""
        del self._streams[stream.row]
        rt.batch.release(stream.row)
        rt.codec.release(stream.codec_row)
        if error is not None:
            stream.job.mailbox.fail(error)
        else:
            stream.job.mailbox.end()
