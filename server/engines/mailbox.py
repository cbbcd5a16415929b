"""The one way a model thread hands results to a coroutine on the event loop.

A ``Mailbox`` is made on the loop by the consumer of one job (an engine
request, a render) and filled from the engine's thread: ``put`` for each
result, then ``end`` or ``fail``. The consumer reads with ``get`` (one result)
or ``async for`` (a stream). When the consumer stops listening (the utterance
was cancelled, the client left) it calls ``close``; the producer sees
``closed`` and drops the job before its next step. A loop that has already
shut down closes the mailbox too, so a thread never raises into nowhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Mailbox(Generic[T]):
    """Results of one job, from any thread to one consumer on the loop that made it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        """The consumer has gone (or the loop has): the job may be dropped."""
        return self._closed.is_set()

    def put(self, item: T) -> None:
        self._deliver(item)

    def end(self) -> None:
        self._deliver(_END)

    def fail(self, error: BaseException) -> None:
        self._deliver(_Failure(error))

    def close(self) -> None:
        """Called by the consumer: nobody reads what comes after this."""
        self._closed.set()

    def _deliver(self, item: Any) -> None:
        if self._closed.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody will ever read this
            self._closed.set()

    async def get(self) -> T:
        """The next result; raises the job's failure, or ``EOFError`` after ``end``."""
        item = await self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        if item is _END:
            raise EOFError("the job has ended")
        result: T = item
        return result

    async def __aiter__(self) -> AsyncIterator[T]:
        """Every result until ``end``; raises the failure if the job fails. Closes on exit."""
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.close()
