"""Attack 8: does the token end up in the server's log?

A short session the way the printed URL invites it, with ``?token=`` on
everything: the page, the WebSocket (hello, one sentence), the HTTP API
(list voices, one speech request). The server runs with ``--log-level
info``. Figures: the token's occurrences in the log, the startup banner
(which hands the URL to the user and may carry it) counted apart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import wire
from .outcome import Outcome
from .target import Target

TOKEN = "log-token-5f3a9c1e7b"


def count(log: str, token: str) -> dict[str, int]:
    """Occurrences in the banner (the indented URL lines printed at start) and everywhere else."""
    banner = rest = 0
    for line in log.splitlines():
        n = line.count(token)
        if line.startswith("  https://") or line.startswith("  http://"):
            banner += n
        else:
            rest += n
    return {"banner": banner, "elsewhere": rest}


async def token_in_logs(target: Target) -> Outcome:
    query = f"?token={TOKEN}"
    async with target.http() as http:
        page = (await http.get(f"/{query}")).status_code
        voices = (await http.get(f"/v1/voices{query}")).status_code
        speech = await http.post(f"/v1/audio/speech{query}", json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"})
    ws = await wire.open_ws(target, url_token=TOKEN)
    ready = await wire.hello(ws)
    await wire.speak(ws, "u", "Hello there.")
    heard = await wire.listen(ws, "u", cap_s=20)
    await wire.close_quietly(ws)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(target.stop)  # flushes the log
    counts = count(target.log(), TOKEN)
    figures: dict[str, Any] = {
        **counts,
        "requests": {"page": page, "voices": voices, "speech": speech.status_code, "ws_ready": (ready or {}).get("type"), "ws_done": heard.done is not None},
        "log_level": "info",
    }
    return Outcome(f"token {counts['elsewhere']}x in the log (+{counts['banner']}x in the startup banner)", figures)
