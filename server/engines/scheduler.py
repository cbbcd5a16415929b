"""Worker threads that own model instances, fed from the engines' deadline queue.

A thread pool that runs each request as it comes lets requests contend for the
cores; under load every stream slows down together and they all underrun. Here
each worker thread owns one model instance (so no instance is ever entered by
two threads) and always takes the next job of the ``DeadlineQueue``: the one
whose audio is needed soonest, with a fair turn between sessions among jobs
that are already due.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import Unavailable
from .mailbox import Mailbox
from .queue import DeadlineQueue

M = TypeVar("M")
T = TypeVar("T")


Emit = Callable[[Any], None]
Stopped = Callable[[], bool]


@dataclass
class _Job:
    fn: Callable[[Any, Emit, Stopped], None]
    results: Mailbox[Any]


class WorkerPool(Generic[M]):
    """``workers`` threads, each building its own model with ``factory`` when started."""

    def __init__(self, name: str, factory: Callable[[], M], workers: int) -> None:
        self.name = name
        self.workers = workers
        self._factory = factory
        self._queue: DeadlineQueue[_Job] = DeadlineQueue(dead=lambda job: job.results.closed)
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker (queue depth, for metrics)."""
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self._busy

    async def start(self) -> None:
        """Start the workers; returns once each has built its model (or raises why one could not)."""
        built: list[Mailbox[None]] = [Mailbox() for _ in range(self.workers)]
        for index, mailbox in enumerate(built):
            thread = threading.Thread(target=self._run, args=(mailbox,), name=f"{self.name}-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        for mailbox in built:
            await mailbox.get()

    async def close(self) -> None:
        for job in self._queue.close():
            job.results.fail(Unavailable("the engine is shutting down"))
        await asyncio.gather(*(asyncio.to_thread(t.join) for t in self._threads))
        self._threads.clear()

    async def run(self, due: float, fn: Callable[[M], T], *, owner: Hashable = None) -> T:
        """``fn(model)`` on a worker; a caller that is cancelled drops the job if it has not started."""
        async for result in self.stream(due, lambda model, emit, stopped: emit(fn(model)), owner=owner):
            return result  # type: ignore[no-any-return]
        raise AssertionError("a run job emits its result")

    async def stream(self, due: float, fn: Callable[[M, Emit, Stopped], None], *, owner: Hashable = None) -> AsyncIterator[Any]:
        """What ``fn(model, emit, stopped)`` emits, as it emits it. ``stopped()`` turns true once the
        caller has gone, so a long job can end between two pieces of work instead of running out."""
        results: Mailbox[Any] = Mailbox()
        self._queue.push(_Job(fn, results), due=due, owner=owner)
        try:
            async for item in results:
                yield item
        finally:
            results.close()

    def _run(self, built: Mailbox[None]) -> None:
        try:
            model = self._factory()
        except BaseException as exc:  # start() reports it
            built.fail(exc)
            return
        built.put(None)
        while (job := self._queue.pop()) is not None:
            with self._lock:
                self._busy += 1
            try:
                job.fn(model, job.results.put, functools.partial(_closed, job.results))
                job.results.end()
            except BaseException as exc:
                job.results.fail(exc)
            finally:
                with self._lock:
                    self._busy -= 1


def _closed(results: Mailbox[Any]) -> bool:
    return results.closed
