"""Attack 12 (``--soak``): sessions speaking in a closed loop for minutes; does memory creep?

``SESSIONS`` clients each speak short and medium sentences back to back
(the next as soon as ``done`` arrives). The server's resident memory is
sampled every ``SAMPLE_S``. The figure is its growth from minute 2 (the
server warmed up, every session running) to the end; the target is < 5 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

from bench import corpus
from client import Client

from . import procfs
from .outcome import Outcome
from .target import Target

SESSIONS = 24
SAMPLE_S = 10.0
UTTERANCE_LIMIT_S = 60.0


async def _speaker(target: Target, seed: int, until: float, tally: dict[str, int]) -> None:
    sentences = corpus.load(("short", "medium"))
    rng = random.Random(seed)
    async with await Client.connect(target.ws_url, ssl=target.ssl_context()) as client:
        while time.monotonic() < until:
            item = rng.choice(sentences.items)
            speech = await client.speak(item.text, design=sentences.designs[seed % len(sentences.designs)])
            try:
                await asyncio.wait_for(speech.collect(), UTTERANCE_LIMIT_S)
                tally["done"] += 1
            except asyncio.TimeoutError:
                tally["timeouts"] += 1
                await speech.cancel()
            except Exception:
                tally["errors"] += 1


async def soak(target: Target, minutes: float = 10.0) -> Outcome:
    started = time.monotonic()
    until = started + minutes * 60
    tally = {"done": 0, "timeouts": 0, "errors": 0}
    speakers = [asyncio.create_task(_speaker(target, seed, until, tally)) for seed in range(SESSIONS)]
    samples: list[tuple[float, float]] = []
    try:
        while (now := time.monotonic()) <= until + 0.5:
            samples.append((round(now - started, 1), procfs.memory(target.pid).rss / procfs.MIB))
            await asyncio.sleep(max(0.0, started + len(samples) * SAMPLE_S - time.monotonic()))
    finally:
        tally["sessions_failed"] = sum(t.done() and not t.cancelled() and t.exception() is not None for t in speakers)
        for task in speakers:
            task.cancel()
        for task in speakers:
            with contextlib.suppress(BaseException):
                await task
    return Outcome(*_summary(samples, minutes, tally))


def _summary(samples: list[tuple[float, float]], minutes: float, tally: dict[str, int]) -> tuple[str, dict[str, Any]]:
    from_s = min(120.0, minutes * 60 / 5)
    at_from = min(samples, key=lambda s: abs(s[0] - from_s))
    end = samples[-1]
    growth = (end[1] - at_from[1]) / at_from[1] * 100
    figures: dict[str, Any] = {
        "sessions": SESSIONS,
        "minutes": minutes,
        "rss_start_mib": round(samples[0][1], 1),
        "rss_from_mib": round(at_from[1], 1),
        "from_s": at_from[0],
        "rss_end_mib": round(end[1], 1),
        "rss_peak_mib": round(max(s[1] for s in samples), 1),
        "growth_pct": round(growth, 1),
        "utterances": tally,
        "samples": [[t, round(rss, 1)] for t, rss in samples],
    }
    cell = (f"RSS {at_from[1]:,.0f} → {end[1]:,.0f} MiB from minute {at_from[0] / 60:.0f} to {end[0] / 60:.0f}: {growth:+.1f} % "
            f"(start {samples[0][1]:,.0f}, peak {figures['rss_peak_mib']:,.0f}; {tally['done']} utterances, {tally['timeouts']} timeouts, {tally['errors']} errors)")
    return cell, figures


def plot(series: dict[str, list[list[float]]], path: Any) -> None:
    """RSS over time, one line per tree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, samples in series.items():
        ax.plot([t / 60 for t, _ in samples], [rss for _, rss in samples], marker=".", label=label)
    ax.axvline(2, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(f"Soak: {SESSIONS} sessions speaking in a closed loop")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
