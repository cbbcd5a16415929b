"""Running the attacks against one code tree: each on a fresh server of its own.

A fresh server per attack keeps each figure clean (memory that one attack
left behind does not flatter or spoil the next). Start-up takes seconds, so
the servers of the next attacks start while one runs, ``ahead`` at a time;
an attack whose figures are timings (``quiet``) waits until those start-ups
are over, so none runs during it. The first server starts alone: it
makes the tree's certificates, which the others then share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .outcome import Outcome
from .target import ServerSpec, Target


@dataclass(frozen=True)
class Attack:
    key: str
    title: str
    run: Callable[[Target], Awaitable[Outcome]]
    spec: ServerSpec = field(default_factory=ServerSpec)
    quiet: bool = False
    """Its figures are timings: nothing else starts while it runs."""
    budget_s: float = 240.0
    """A hard bound; an attack past it is reported as failed."""
    stops_server: bool = False
    """It ends the server itself (kill -9, SIGTERM); otherwise a dead server is worth reporting."""


async def run_tree(tree: Path, attacks: list[Attack], scratch: Path, *, ahead: int = 2, log: Callable[[str], None] = print) -> dict[str, Outcome]:
    certs = scratch / "certs"
    targets = [Target(tree, scratch / attack.key, certs, attack.spec) for attack in attacks]
    starts: dict[int, asyncio.Task[Target]] = {}

    def kick(i: int) -> None:
        if i < len(targets) and i not in starts:
            starts[i] = asyncio.create_task(asyncio.to_thread(targets[i].start), name=f"start-{attacks[i].key}")

    outcomes: dict[str, Outcome] = {}
    try:
        for i, attack in enumerate(attacks):
            kick(i)
            if i > 0:  # the first makes the certificates the others use
                for j in range(i + 1, i + 1 + ahead):
                    kick(j)
            try:
                target = await starts[i]
                if attack.quiet:
                    await asyncio.gather(*(task for j, task in starts.items() if j > i), return_exceptions=True)
            except Exception as exc:
                outcomes[attack.key] = Outcome.failed(exc)
                log(f"  {attack.key:<12} server did not start: {exc}")
                continue
            outcomes[attack.key] = await _run_one(attack, target)
            log(f"  {attack.key:<12} {outcomes[attack.key].cell}  [{outcomes[attack.key].seconds:.0f} s]")
            await asyncio.to_thread(target.stop)
    finally:
        for task in starts.values():
            task.cancel()
        for task in starts.values():
            with contextlib.suppress(BaseException):
                await task
        for target in targets:
            await asyncio.to_thread(target.stop)
    return outcomes


async def _run_one(attack: Attack, target: Target) -> Outcome:
    began = time.monotonic()
    try:
        outcome = await asyncio.wait_for(attack.run(target), attack.budget_s)
    except Exception as exc:
        outcome = Outcome.failed(exc)
    outcome.seconds = time.monotonic() - began
    if not target.running() and not attack.stops_server:
        outcome.figures["server_died"] = True
    return outcome
