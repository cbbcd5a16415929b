"""Worker threads that own model instances, served earliest deadline first.

A thread pool that runs each request as it comes lets requests contend for the
cores; under load every stream slows down together and they all underrun. Here
each worker thread owns one model instance (so no instance is ever entered by
two threads) and always takes the job whose audio is needed soonest: a new
utterance's first segment (due now) overtakes the next segment of an utterance
that still has seconds of audio buffered at its listener.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .. import metrics
from ..errors import Unavailable

M = TypeVar("M")
T = TypeVar("T")


@dataclass(order=True)
class _Job:
    due: float
    order: int
    fn: Callable[[Any], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    submitted: float = field(compare=False, default_factory=time.monotonic)


class WorkerPool(Generic[M]):
    """``workers`` threads, each building its own model with ``factory``."""

    def __init__(self, name: str, factory: Callable[[], M], workers: int) -> None:
        self.name = name
        self._factory = factory
        self._workers = workers
        self._heap: list[_Job] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.busy = 0

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker (queue depth, for metrics)."""
        return len(self._heap)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: list[asyncio.Future[None]] = [loop.create_future() for _ in range(self._workers)]
        for index, started in enumerate(ready):
            thread = threading.Thread(target=self._run, args=(loop, started), name=f"{self.name}-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        await asyncio.gather(*ready)

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for job in pending:
            job.loop.call_soon_threadsafe(_fail, job.future, Unavailable("the engine is shutting down"))
        await asyncio.gather(*(asyncio.to_thread(t.join) for t in self._threads))
        self._threads.clear()

    def submit(self, due: float, fn: Callable[[M], T]) -> asyncio.Future[T]:
        """Run ``fn(model)`` on a worker; cancelling the future drops a job not yet started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._closed:
                raise Unavailable("the engine is shutting down")
            heapq.heappush(self._heap, _Job(due, next(self._order), fn, future, loop))
            self._cond.notify()
        return future

    def _next(self) -> _Job | None:
        with self._cond:
            while True:
                while self._heap and self._heap[0].future.cancelled():
                    heapq.heappop(self._heap)
                if self._heap:
                    self.busy += 1
                    job = heapq.heappop(self._heap)
                    metrics.QUEUE_WAIT.observe(time.monotonic() - job.submitted)
                    return job
                if self._closed:
                    return None
                self._cond.wait()

    def _run(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future[None]) -> None:
        try:
            model = self._factory()
        except BaseException as exc:  # the start() caller reports it
            loop.call_soon_threadsafe(_fail, started, exc)
            return
        loop.call_soon_threadsafe(_succeed, started, None)
        while (job := self._next()) is not None:
            try:
                result = job.fn(model)
            except BaseException as exc:
                job.loop.call_soon_threadsafe(_fail, job.future, exc)
            else:
                job.loop.call_soon_threadsafe(_succeed, job.future, result)
            finally:
                with self._cond:
                    self.busy -= 1


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
