"""Attack 4: one 5,000-character text of a kind the engine may not speak well.

Each kind runs on a fresh server: the text is spoken once (read for up to
``CAP_S``, then cancelled) while the server's memory is watched, and
``/healthz`` shows how long the engine stays busy after the cancel (the size
of its jobs). A text that finished within the cap is spoken again and
cancelled half a second after its first audio, for the same figure. For the
long word, its first 100 characters are spoken too: if the whole word gives
no more audio than its prefix, text was dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from . import wire
from .outcome import Outcome, mb, secs
from .target import Target
from .watch import Watch, settled_rss

CHARS = 5000
CAP_S = 15.0
PROBE_CAP_S = 4.0
WORD = "supercalifragilisticexpialidocious"


def _fill(unit: str) -> str:
    return (unit * (CHARS // len(unit) + 1))[:CHARS]


def _numbers() -> str:
    rng = random.Random(19)
    return _fill(" ".join(str(rng.randrange(10**18, 10**19)) for _ in range(CHARS // 20 + 1)) + " ")


TEXTS: dict[str, str] = {
    "arabic": _fill("مرحبا بكم في هذا العالم الجميل، كيف حالكم اليوم؟ "),
    "hebrew": _fill("שלום לכולם, מה שלומכם היום בעולם היפה הזה? "),
    "numbers": _numbers(),
    "emoji": _fill("😀🎉🚀🌍🔥💡🎶 "),
    "ssml": _fill('<speak><prosody rate="slow">Hello there, this is a test.</prosody></speak> '),
    "long_word": _fill(WORD),
    # The control: ordinary prose of the same length, for what any 5,000 characters cost a fresh server.
    "prose": _fill("The quick brown fox jumps over the lazy dog, and then it runs far away into the deep green forest. "),
}


BUSY_LIMIT_S = 15.0


async def _engine_idle_after(target: Target) -> float | str | None:
    """Seconds until ``/healthz`` shows the engine with nothing busy or queued.

    ``f">{BUSY_LIMIT_S}"`` if it is still busy then; None if health does not say.
    """
    started = time.monotonic()
    async with target.http(timeout=10) as http:
        while time.monotonic() - started < BUSY_LIMIT_S:
            engine = (await http.get("/healthz")).json().get("engine", {})
            if "busy" not in engine:
                return None
            if not engine.get("busy") and not engine.get("queue_depth"):
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.1)
    return f">{BUSY_LIMIT_S:.0f}"


def _heard(heard: wire.Heard) -> dict[str, Any]:
    return {
        "audio_s": round(heard.audio_s, 1),
        "first_audio_s": None if heard.first_audio_s is None else round(heard.first_audio_s, 2),
        "wall_s": round(heard.wall_s, 2),
        "longest_wait_s": round(heard.max_gap_s if heard.first_audio_s is not None else heard.wall_s, 2),
        "cut_at_cap": heard.cancelled_at_s is not None and heard.done is not None and bool(heard.done.get("cancelled")),
        "done": heard.done is not None,
        "errors": [f"{e.get('code')}: {str(e.get('message'))[:120]}" for e in heard.errors],
    }


async def one_text(target: Target, kind: str) -> Outcome:
    text = TEXTS[kind]
    ws = await wire.open_ws(target)
    await wire.hello(ws)
    async with Watch(target) as watch:
        await wire.speak(ws, "whole", text)
        whole = await wire.listen(ws, "whole", cap_s=CAP_S)
        busy_after = await _engine_idle_after(target)
    figures: dict[str, Any] = {"chars": len(text), **watch.figures(), **_heard(whole)}
    figures["rss_settled_mib"] = await settled_rss(target, 2.0)
    if whole.cancelled_at_s is not None:
        figures["cancel_to_done_s"] = None if whole.cancel_to_done_s is None else round(whole.cancel_to_done_s, 2)
        figures["engine_busy_after_cancel_s"] = busy_after
    elif whole.audio_s:
        # It finished within the cap: cancel a second run of it early to see how long the engine stays busy.
        await wire.speak(ws, "cancelled", text)
        probe = await wire.listen(ws, "cancelled", cap_s=PROBE_CAP_S, cancel_after_audio_s=0.5)
        figures["cancel_to_done_s"] = None if probe.cancel_to_done_s is None else round(probe.cancel_to_done_s, 2)
        figures["engine_busy_after_cancel_s"] = await _engine_idle_after(target) if probe.cancelled_at_s is not None else None
    if kind == "long_word":
        await wire.speak(ws, "prefix", text[:100])
        prefix = await wire.listen(ws, "prefix", cap_s=CAP_S)
        figures["prefix_100_audio_s"] = round(prefix.audio_s, 1)
        figures["text_dropped"] = bool(whole.audio_s) and not whole.errors and whole.audio_s < 2 * prefix.audio_s
    await wire.close_quietly(ws)
    return Outcome(_cell(figures), figures)


def _cell(f: dict[str, Any]) -> str:
    if f["errors"] and not f["audio_s"]:
        head = f"refused in {secs(f['wall_s'], 2)}: {f['errors'][0][:70].rstrip(' ;,.')}"
    else:
        cut = f" (cut at {CAP_S:.0f} s)" if f["cut_at_cap"] else ""
        head = f"{f['audio_s']:.0f} s audio in {secs(f['wall_s'])}{cut}"
        if f["errors"]:
            head += f", error {f['errors'][0][:50]}"
    parts = [mb(f["rss_growth_mib"]), head, f"longest wait for audio {secs(f['longest_wait_s'])}"]
    busy = f.get("engine_busy_after_cancel_s")
    if isinstance(busy, str):
        parts.append(f"engine still busy {busy[1:]} s after a cancel")
    elif busy is not None:
        parts.append(f"engine busy {secs(busy)} after a cancel")
    if "text_dropped" in f:
        parts.append(f"its 100-char prefix: {f['prefix_100_audio_s']:.0f} s audio" + (": text DROPPED" if f["text_dropped"] else ""))
    return "; ".join(parts)
