"""The worker pool: earliest deadline first, one model per thread, clean shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.engines.scheduler import WorkerPool
from server.errors import Unavailable


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

    blocker = pool.submit(0.0, job("blocker"))
    await asyncio.sleep(0.05)  # the worker is now inside the blocker
    later = pool.submit(30.0, job("later"))
    soon = pool.submit(10.0, job("soon"))
    dropped = pool.submit(5.0, job("dropped"))
    dropped.cancel()
    assert pool.depth == 3
    gate.set()
    threads = await asyncio.gather(blocker, soon, later)
    assert order == ["blocker", "soon", "later"]
    assert len(set(threads)) == 1
    await pool.close()


async def test_close_fails_pending_work_and_refuses_new() -> None:
    gate = threading.Event()
    pool: WorkerPool[None] = WorkerPool("test", lambda: None, workers=1)
    await pool.start()
    running = pool.submit(0.0, lambda _: gate.wait(5))
    await asyncio.sleep(0.05)
    waiting = pool.submit(1.0, lambda _: "never")
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    gate.set()
    await closing
    assert await running is True
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        pool.submit(0.0, lambda _: None)


async def test_a_failing_job_reports_its_error_and_the_worker_goes_on() -> None:
    pool: WorkerPool[None] = WorkerPool("test", lambda: None, workers=2)
    await pool.start()

    def boom(_: None) -> None:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        await pool.submit(0.0, boom)
    assert await pool.submit(0.0, lambda _: 42) == 42
    await pool.close()


async def test_a_model_that_cannot_load_fails_start() -> None:
    def broken() -> None:
        raise OSError("weights missing")

    pool: WorkerPool[None] = WorkerPool("test", broken, workers=1)
    with pytest.raises(OSError, match="weights missing"):
        await pool.start()
