"""Attack 5: four heavy clients against one light one.

A victim speaks one short sentence a few times on an idle server (its TTFA
without load), then four clients open eight long utterances each at once and
the victim speaks the same sentence again, a few times (each try bounded). Figures: the
victim's client-side TTFA (speak sent → first audio received), median and
worst, without and with the load.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench import corpus
from client import Client

from .outcome import Outcome
from .target import Target

HEAVY_CLIENTS = 4
UTTERANCES_EACH = 8
TRIES = 5
LOADED_TRIES = 3
TRY_LIMIT_S = 15.0
VICTIM_TEXT = "The quick brown fox jumps over the lazy dog."


async def _ttfa(victim: Client, design: str) -> float | None:
    """One try: the victim's TTFA in ms; None if no audio came in ``TRY_LIMIT_S``."""
    speech = await victim.speak(VICTIM_TEXT, design=design)
    try:
        await asyncio.wait_for(speech.collect(), TRY_LIMIT_S)
    except asyncio.TimeoutError:
        await speech.cancel()
    return None if speech.ttfa_ms is None else round(speech.ttfa_ms, 1)


async def _tries(victim: Client, design: str, count: int) -> list[float | None]:
    out = []
    for _ in range(count):
        out.append(await _ttfa(victim, design))
        await asyncio.sleep(0.3)
    return out


def _median(values: list[float | None]) -> float | None:
    """Median where a try with no audio counts as the slowest."""
    if not values:
        return None
    if any(v is None for v in values):
        ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
        return ordered[len(ordered) // 2]
    return round(statistics.median(v for v in values if v is not None), 1)


async def fairness(target: Target) -> Outcome:
    sentences = corpus.load(("long",))
    design = sentences.designs[0]
    victim = await Client.connect(target.ws_url, ssl=target.ssl_context())
    heavy: list[Client] = []
    try:
        await _ttfa(victim, design)  # warm-up: the voice's first use
        quiet = await _tries(victim, design, TRIES)
        heavy = [await Client.connect(target.ws_url, ssl=target.ssl_context()) for _ in range(HEAVY_CLIENTS)]
        longs = [item.text for item in sentences.items]
        for c, client in enumerate(heavy):
            for u in range(UTTERANCES_EACH):
                await client.speak(longs[(c * UTTERANCES_EACH + u) % len(longs)], design=sentences.designs[c % len(sentences.designs)])
        await asyncio.sleep(1.0)
        began = time.monotonic()
        loaded = await _tries(victim, design, LOADED_TRIES)
        loaded_s = time.monotonic() - began
    finally:
        for client in [victim, *heavy]:
            await client.close()
    figures: dict[str, Any] = {
        "ttfa_quiet_ms": quiet,
        "ttfa_loaded_ms": loaded,
        "ttfa_quiet_median_ms": _median(quiet),
        "ttfa_loaded_median_ms": _median(loaded),
        "ttfa_loaded_worst_ms": None if None in loaded else max(v for v in loaded if v is not None),
        "tries_no_audio": sum(v is None for v in loaded),
        "loaded_tries_took_s": round(loaded_s, 1),
        "heavy": f"{HEAVY_CLIENTS} clients x {UTTERANCES_EACH} long utterances",
    }
    q, m = figures["ttfa_quiet_median_ms"], figures["ttfa_loaded_median_ms"]
    figures["ratio"] = None if q is None or m is None or not q else round(m / q, 1)
    return Outcome(_cell(figures), figures)


def _cell(f: dict[str, Any]) -> str:
    m, q, w = f["ttfa_loaded_median_ms"], f["ttfa_quiet_median_ms"], f["ttfa_loaded_worst_ms"]
    loaded = f"no audio in {TRY_LIMIT_S:.0f} s" if m is None else f"{m:,.0f} ms"
    worst = f"no audio in {TRY_LIMIT_S:.0f} s" if w is None else f"{w:,.0f} ms"
    ratio = f" ({f['ratio']}x)" if f["ratio"] else ""
    return f"victim TTFA median {loaded} under load vs {q:,.0f} ms idle{ratio}; worst {worst}"
