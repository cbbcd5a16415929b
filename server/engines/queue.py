"""The engines' one waiting line: earliest deadline first, a fair turn per session.

Every engine's work waits here before a model thread takes it: the preview
engine's render jobs and the Qwen engine's streams waiting for a decode row.

Two rules decide what goes next:

* **Deadline.** A job carries the ``time.monotonic()`` by which its audio is
  needed (``SynthesisRequest.due``): a new utterance's first segment is due
  now, a later segment when the listener's buffered audio runs out. Jobs not
  yet due go in deadline order, so a first segment overtakes a segment whose
  listener still has seconds of audio to play.
* **Fair turn.** Among the jobs that are already due, the owner (a session)
  served longest ago goes first. Without it, a client that opens eight long
  utterances puts eight due jobs ahead of another user's one, and that user's
  first audio waits for all of them; with it, the other user waits for at most
  one job per competing session.

The queue is thread-safe: sessions push from the event loop, model threads pop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .. import metrics
from ..errors import Unavailable

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    due: float
    order: int
    owner: Hashable
    item: T
    pushed: float


class DeadlineQueue(Generic[T]):
    """Jobs waiting for a model thread. ``dead(item)`` marks jobs to drop unserved (cancelled)."""

    def __init__(self, dead: Callable[[T], bool] = lambda _: False, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: list[_Entry[T]] = []
        self._dead = dead
        self._clock = clock
        self._order = itertools.count()
        self._turn = itertools.count(1)
        self._served: dict[Hashable, int] = {}
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, item: T, *, due: float, owner: Hashable = None) -> None:
        """Queue ``item``; ``owner`` None makes it an owner of its own (no fair-turn grouping)."""
        with self._cond:
            if self._closed:
                raise Unavailable("the engine is shutting down")
            order = next(self._order)
            self._entries.append(_Entry(due, order, ("job", order) if owner is None else owner, item, self._clock()))
            self._cond.notify()

    def pop(self, *, block: bool = True) -> T | None:
        """The next job; None when the queue is closed (or, without ``block``, empty)."""
        with self._cond:
            while True:
                entry = self._choose()
                if entry is not None:
                    return entry.item
                if self._closed or not block:
                    return None
                self._cond.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a job waits or the queue closes; True when there is a job."""
        with self._cond:
            self._cond.wait_for(lambda: self._entries or self._closed, timeout)
            return bool(self._entries) and not self._closed

    def close(self) -> list[T]:
        """Refuse new jobs, wake every waiting thread, and hand back the jobs never served."""
        with self._cond:
            self._closed = True
            left, self._entries = self._entries, []
            self._cond.notify_all()
        return [entry.item for entry in left if not self._dead(entry.item)]

    def _choose(self) -> _Entry[T] | None:
        self._entries = [e for e in self._entries if not self._dead(e.item)]
        if not self._entries:
            return None
        now = self._clock()
        due = [e for e in self._entries if e.due <= now]
        if due:
            entry = min(due, key=lambda e: (self._served.get(e.owner, 0), e.due, e.order))
        else:
            entry = min(self._entries, key=lambda e: (e.due, e.order))
        self._entries.remove(entry)
        self._served[entry.owner] = next(self._turn)
        if len(self._served) > 4 * len(self._entries) + 1024:
            self._forget_idle_owners()
        metrics.QUEUE_WAIT.observe(self._clock() - entry.pushed)
        return entry

    def _forget_idle_owners(self) -> None:
        # An owner with nothing queued loses nothing by being forgotten: it would be
        # "served longest ago" again, which is where a returning session belongs.
        waiting = {e.owner for e in self._entries}
        self._served = {owner: turn for owner, turn in self._served.items() if owner in waiting}
