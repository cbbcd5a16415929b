"""One thread per model: it runs every active stream of that model, a frame at a time.

Sessions never touch a model. They submit a ``Job`` and await its queue; the
scheduler admits jobs earliest-deadline-first (prefill), then advances all
admitted streams one step per round and posts audio chunks back to the event
loop. A cancelled job is dropped before its next step. The round hands the
whole list of live streams to ``Talker.step``, which can become one batched
forward later without touching this loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import EngineError, MineStreamError, Unavailable
from .manager import ModelManager
from .stream import CodecStream, Prompt, StreamState, Talker

logger = logging.getLogger("minestream.qwen")

END = object()


class Job:
    """One segment's stream: built on the model thread, consumed on the event loop."""

    def __init__(
        self,
        build: Callable[[Any], Prompt],
        *,
        due: float,
        max_frames: int,
        chunks: tuple[int, int],
        left_context: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.build = build
        self.due = due
        self.max_frames = max_frames
        self.first_chunk, self.chunk = chunks
        self.left_context = left_context
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        # Both are made by start() on the model's thread, before any step.
        self.state: StreamState = None  # type: ignore[assignment]
        self.codec: CodecStream = None  # type: ignore[assignment]
        self.next_chunk = self.first_chunk
        self.pushed = 0
        self.marks: dict[str, float] = {"submitted": time.perf_counter()}
        """When each phase before the first audio ended (perf_counter), for the TTFA breakdown."""

    def cancel(self) -> None:
        self.cancelled.set()

    def post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone; nobody is listening
            self.cancel()

    def start(self, tts: Any, talker: Talker) -> None:
        self.marks["admitted"] = time.perf_counter()
        prompt = self.build(tts)
        self.marks["prompt"] = time.perf_counter()
        # upstream's max_new_tokens counts the final (unconsumed) token too
        cap = int(prompt.talker_kwargs.get("max_new_tokens") or self.max_frames + 1) - 1
        self.state = StreamState(prompt, max_frames=max(1, min(self.max_frames, cap)))
        self.codec = CodecStream(tts, prompt.ref_code, self.left_context)
        talker.prefill(self.state)
        self.marks["prefill"] = time.perf_counter()  # it sampled the first token: the device is done

    def collect(self) -> None:
        """Move new frames to the codec and post a chunk when enough are pending."""
        state, codec = self.state, self.codec
        codec.push(state.frames[self.pushed :])
        self.pushed = len(state.frames)
        if codec.pending >= self.next_chunk or (state.done and codec.pending):
            first = "decoded" not in self.marks
            if first:
                self.marks["frames"] = time.perf_counter()
            self.post(codec.flush())
            if first:
                self.marks["decoded"] = time.perf_counter()
            # Chunks double up to the full size: each one is generated in less time than
            # the audio already sent lasts, so a small first chunk does not starve the player.
            self.next_chunk = min(self.chunk, 2 * self.next_chunk)
        if state.done:
            self.post(END)


class Scheduler:
    def __init__(self, kind: str, manager: ModelManager, *, max_active: int = 32, talker_for: Callable[[Any], Talker] = Talker) -> None:
        self.kind = kind
        self.manager = manager
        self.talker_for = talker_for
        self.max_active = max_active
        self._pending: list[tuple[float, int, Job]] = []
        self._active: list[Job] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"qwen-{kind}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("the engine is shutting down")
            heapq.heappush(self._pending, (job.due, next(self._order), job))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        for job in [j for _, _, j in self._pending] + self._active:
            job.post(Unavailable("the engine shut down"))

    def _run(self) -> None:
        if self.kind in self.manager.loaded():  # make the talker (graphs, codec warm-up) now, not in a request
            self.talker_for(self.manager.acquire(self.kind))
            self.manager.release(self.kind)
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            tts = self.manager.acquire(self.kind)
            try:
                self._serve(tts, self.talker_for(tts))
            finally:
                self.manager.release(self.kind)

    def _serve(self, tts: Any, talker: Talker) -> None:
        """One turn with the model: run until nothing is active and nothing may be admitted.

        The jobs already waiting when the turn begins are all admitted even if
        the other model wants the memory: yielding at once would hand the
        model back and forth without either side serving anyone.
        """
        first = True
        while not self._closed:
            self._drop_finished(talker)  # before admitting, so a new stream can reuse a finished one's slot
            self._admit(tts, talker, turn_start=first)
            first = False
            self._drop_finished(talker)
            if not self._active:
                with self._cond:
                    if not self._pending or self.manager.should_yield(self.kind):
                        return
                continue
            self._active.sort(key=lambda j: j.due)
            try:
                talker.step([j.state for j in self._active])
            except Exception as exc:  # one bad stream must not kill the others
                logger.exception("qwen %s step failed", self.kind)
                for job in self._active:
                    job.post(EngineError(f"synthesis failed: {exc}"))
                    job.cancel()
                continue
            for job in self._active:
                job.collect()

    def _drop_finished(self, talker: Talker) -> None:
        live = [j for j in self._active if not j.cancelled.is_set() and not j.state.done]
        for job in set(self._active) - set(live):
            talker.release(job.state)
        self._active = live

    def _admit(self, tts: Any, talker: Talker, *, turn_start: bool = False) -> None:
        while len(self._active) < self.max_active and (turn_start or not self.manager.should_yield(self.kind)):
            with self._cond:
                if not self._pending:
                    return
                _, _, job = heapq.heappop(self._pending)
            if job.cancelled.is_set():
                continue
            try:
                job.start(tts, talker)
            except Exception as exc:
                if job.state is not None:
                    talker.release(job.state)
                if not isinstance(exc, MineStreamError):
                    logger.exception("qwen %s prefill failed", self.kind)
                    exc = EngineError(f"synthesis failed: {exc}")
                job.post(exc)
                continue
            job.collect()
            self._active.append(job)
