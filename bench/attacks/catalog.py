"""The attacks of issue 13, in the order they run, each with the server it needs."""

from __future__ import annotations

from functools import partial

from . import bodies, crash, drain, edge, fairness, flood, lockout, logs, origin, texts
from .runner import Attack
from .target import ServerSpec

JUNK_TOKEN = "junk-token-0123456789"

ATTACKS: list[Attack] = [
    Attack("1a", "1 · never reads; pings with a 900 KB `t`", flood.big_pings),
    Attack("1b", "1 · never reads; permessage-deflate, 1 MB pings (~1 KB on the wire)", flood.deflated_pings),
    Attack("2", "2 · token server; small frames before `hello` (up to 60 MB, 20 s), never reads", flood.junk_before_hello,
           ServerSpec(token=JUNK_TOKEN)),
    Attack("6a", "6 · 300 MB chunked JSON to POST /v1/audio/speech", bodies.json_speech, budget_s=150),
    Attack("6b", "6 · 1 GB chunked multipart to POST /v1/voices", bodies.multipart_voice, budget_s=150),
    Attack("7", "7 · cross-site POSTs (`Origin: https://evil.example`)", origin.cross_site),
    Attack("8", "8 · `?token=` on page, socket and API; `--log-level info`", logs.token_in_logs, ServerSpec(token=logs.TOKEN, log_level="info"),
           stops_server=True),
    Attack("10", "10 · 200,000-deep frames; lone surrogates in a msgpack session", edge.edge_cases),
    Attack(
        "3",
        f"3 · {lockout.MAX_SESSIONS - 5} (+5) idle sockets, max-sessions {lockout.MAX_SESSIONS}; then a user with the token",
        lockout.idle_sockets,
        ServerSpec(token=lockout.TOKEN, args=("--max-sessions", str(lockout.MAX_SESSIONS))),
        budget_s=150,
    ),
    Attack("9", f"9 · kill -9 during clone saves, {crash.CYCLES} cycles, restart", crash.crash_saves, stops_server=True, budget_s=300),
    *(
        Attack(f"4-{kind}", f"4 · 5,000 characters: {kind.replace('_', ' ')}", partial(texts.one_text, kind=kind), quiet=True, budget_s=200)
        for kind in texts.TEXTS
    ),
    Attack("5", f"5 · victim TTFA vs {fairness.HEAVY_CLIENTS} clients x {fairness.UTTERANCES_EACH} long utterances", fairness.fairness,
           quiet=True, budget_s=300),
    Attack("11", "11 · SIGTERM with an utterance in flight", drain.drain, quiet=True, stops_server=True, budget_s=120),
]
