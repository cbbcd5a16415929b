"""The engines' scheduling: the deadline queue, the mailbox, and the preview worker pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.engines.mailbox import Mailbox
from server.engines.queue import DeadlineQueue
from server.engines.scheduler import WorkerPool
from server.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_jobs_not_yet_due_go_in_deadline_order() -> None:
    clock = Clock()
    queue: DeadlineQueue[str] = DeadlineQueue(clock=clock)
    for name, due in [("later", 130.0), ("soon", 110.0), ("soonest", 105.0)]:
        queue.push(name, due=due, owner="s1")
    assert [queue.pop(block=False) for _ in range(3)] == ["soonest", "soon", "later"]
    assert queue.pop(block=False) is None


def test_among_due_jobs_the_owner_served_longest_ago_goes_first() -> None:
    clock = Clock()
    queue: DeadlineQueue[str] = DeadlineQueue(clock=clock)
    for i in range(8):
        queue.push(f"heavy-{i}", due=90.0 + i, owner="heavy")
    queue.push("light", due=99.0, owner="light")
    queue.push("future", due=150.0, owner="light")
    order = [queue.pop(block=False) for _ in range(10)]
    assert order[:2] == ["heavy-0", "light"], order
    assert order[2:9] == [f"heavy-{i}" for i in range(1, 8)] and order[9] == "future"


def test_dead_jobs_are_dropped_and_close_hands_back_the_rest() -> None:
    cancelled = {"b"}
    queue: DeadlineQueue[str] = DeadlineQueue(dead=lambda item: item in cancelled)
    for name in "abc":
        queue.push(name, due=0.0)
    assert queue.pop(block=False) == "a"
    assert queue.close() == ["c"]
    assert queue.pop() is None
    with pytest.raises(Unavailable):
        queue.push("d", due=0.0)


async def test_a_mailbox_carries_results_failures_and_the_consumers_departure() -> None:
    mailbox: Mailbox[int] = Mailbox()

    def produce() -> None:
        for i in range(3):
            mailbox.put(i)
        mailbox.end()

    threading.Thread(target=produce).start()
    assert [i async for i in mailbox] == [0, 1, 2]
    assert mailbox.closed  # iteration closed it: a producer would now stop
    failing: Mailbox[int] = Mailbox()
    failing.fail(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        await failing.get()


async def test_earliest_deadline_runs_first_and_each_thread_keeps_its_model() -> None:
    gate = threading.Event()
    pool: WorkerPool[dict[str, object]] = WorkerPool("test", lambda: {"thread": threading.get_ident()}, workers=1)
    await pool.start()
    order: list[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        def run(model: dict[str, object]) -> object:
            assert model["thread"] == threading.get_ident()
            if name == "blocker":
                gate.wait(5)
            order.append(name)
            return model["thread"]

        return run

    blocker = asyncio.create_task(pool.run(0.0, job("blocker")))
    await asyncio.sleep(0.05)  # the worker is now inside the blocker
    later = asyncio.create_task(pool.run(30.0, job("later")))
    soon = asyncio.create_task(pool.run(10.0, job("soon")))
    dropped = asyncio.create_task(pool.run(5.0, job("dropped")))
    await asyncio.sleep(0.01)
    dropped.cancel()
    await asyncio.sleep(0.01)
    assert pool.depth == 3  # a cancelled job leaves when a worker next looks
    gate.set()
    threads = await asyncio.gather(blocker, soon, later)
    assert order == ["blocker", "soon", "later"]
    assert len(set(threads)) == 1
    await pool.close()


async def test_close_fails_pending_work_and_refuses_new() -> None:
    gate = threading.Event()
    pool: WorkerPool[None] = WorkerPool("test", lambda: None, workers=1)
    await pool.start()
    running = asyncio.create_task(pool.run(0.0, lambda _: gate.wait(5)))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(pool.run(1.0, lambda _: "never"))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    gate.set()
    await closing
    assert await running is True
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await pool.run(0.0, lambda _: None)


async def test_a_failing_job_reports_its_error_and_the_worker_goes_on() -> None:
    pool: WorkerPool[None] = WorkerPool("test", lambda: None, workers=2)
    await pool.start()

    def boom(_: None) -> None:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        await pool.run(0.0, boom)
    assert await pool.run(0.0, lambda _: 42) == 42
    await pool.close()


async def test_a_model_that_cannot_load_fails_start() -> None:
    def broken() -> None:
        raise OSError("weights missing")

    pool: WorkerPool[None] = WorkerPool("test", broken, workers=1)
    with pytest.raises(OSError, match="weights missing"):
        await pool.start()
    await pool.close()
