"""Protocol fuzzing against the real server over TLS: generated messages, no `internal`, no dead session.

A seeded generator builds each message from the protocol's own shapes, then
breaks it: every client message type of v1 with fields dropped, of the wrong
type, huge or odd (empty, 64 KB, lone surrogates, NUL, NaN, 2**64, deep
nesting), extra fields, near-miss types; random JSON and msgpack trees
(msgpack with binary, ext and non-string keys); random bytes and broken
text; JSON frames in msgpack sessions and the reverse. Ids and refs come from
a small pool so ``text``/``end``/``cancel``/``voice_chunk`` often hit an open
utterance or upload; valid ``speak`` messages are short and mostly cancelled
right away, so the engine is exercised without the run becoming a load test.

Several sessions run at once. Each goes in rounds on a fresh connection: a
few messages before ``hello`` (each must get exactly one answer), ``hello``,
then messages each followed by a marker ``ping``; every marker's ``pong``
must come back (the session is alive after every message) and no ``error``
may carry ``internal``, be fatal, or use a code the protocol does not list.
A failure names the message, what came back and the server log's traceback.

CI runs a few thousand messages. The full run (100,000 messages)::

    MINESTREAM_FUZZ_MESSAGES=100000 python -m pytest -q -s tests/test_fuzz.py

``MINESTREAM_FUZZ_SEED`` picks another seed (the default is fixed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer

MESSAGES = int(os.environ.get("MINESTREAM_FUZZ_MESSAGES", "3000"))
SEED = int(os.environ.get("MINESTREAM_FUZZ_SEED", "13"))
SESSIONS = 4
PER_ROUND = 250
"""Messages per connection after hello; a new connection (and a new pre-hello batch) every round."""
BEFORE_HELLO = 8
WINDOW = 16
"""Markers in flight per session: bounds what the server queues for us."""
ANSWER_S = 30.0
MAX_FRAME = 256 << 10
CODES = {"bad_message", "unknown_type", "not_ready", "unauthorized", "too_large", "limit", "duplicate_id", "unknown_id",
         "voice_not_found", "unsupported_audio", "engine_error", "unavailable", "internal"}
MARK = "fuzz-marker-"
MAX_FAILURES = 500
"""Past this many the run stops (every kind of failure is still reported once, in full)."""

# --- values -----------------------------------------------------------------------------

ODD_STRINGS = ["", " ", "\x00", "\ud800", "a\udfffb", "\u202e\u05e9\u05dc\u05d5\u05dd", "\ufeff", "e\u0301" * 50, "😀" * 40, "<speak>x</speak>",
               "../../etc/passwd", "%s%n", "{}", "null", "NaN", "\r\n", "v_0000000000000000", "\u0000" * 300]
IDS = ["a", "b", "u1", "x" * 128, "x" * 129, "é", "0", " "]
TYPES = ["hello", "speak", "text", "end", "cancel", "voice_begin", "voice_chunk", "voice_end", "ping"]
MAGIC = [b"RIFF\x24\x00\x00\x00WAVEfmt ", b"OggS\x00\x02", b"\x1aE\xdf\xa3", b"fLaC\x00\x00\x00\x22", b"ID3\x04\x00", b"\xff\xfb\x90", b"\x00\x00\x00\x18ftypmp42"]


def text_value(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(ODD_STRINGS)
    if roll < 0.45:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 40)))
    if roll < 0.55:
        return rng.choice("ab.,!? \u05d0\u0627") * rng.choice([1000, 5001, 20000, 65536])
    return " ".join(rng.choice(["hello", "there", "one", "two", "Dr.", "3.14", "fine", "ok"]) for _ in range(rng.randrange(1, 8))) + rng.choice([".", "", "?"])


def scalar(rng: random.Random, *, binary: bool) -> Any:
    options: list[Any] = [0, -1, 1, 2**31, -(2**63), 2**64 - 1, 0.5, -0.0, 1e308, math.nan, math.inf, True, False, None, text_value(rng)]
    if binary:
        options += [rng.randbytes(rng.randrange(0, 64)), msgpack.ExtType(rng.randrange(0, 128), b"ext"), msgpack.Timestamp(rng.randrange(0, 2**32), 0)]
    else:
        options += [10**30, -(10**30)]
    return rng.choice(options)


def tree(rng: random.Random, depth: int, *, binary: bool) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        return scalar(rng, binary=binary)
    if roll < 0.75:
        return [tree(rng, depth - 1, binary=binary) for _ in range(rng.randrange(0, 5))]
    out: dict[Any, Any] = {}
    for _ in range(rng.randrange(0, 5)):
        key: Any = rng.choice(["type", "id", "ref", "text", "t", "data", "voice", text_value(rng)])
        if binary and rng.random() < 0.1:
            key = rng.choice([1, b"k", 2.5])  # keys the server's strict_map_key refuses
        out[key] = tree(rng, depth - 1, binary=binary)
    return out


# --- messages ------------------------------------------------------------------------------


def valid(rng: random.Random, kind: str, *, binary: bool) -> dict[str, Any]:
    """A well-formed message of ``kind`` (short text, ids from the pool)."""
    ident, ref = rng.choice(IDS[:4]), rng.choice(["r1", "r2", "r3"])
    data: Any = rng.choice(MAGIC) + rng.randbytes(rng.randrange(0, 4096))
    shapes: dict[str, dict[str, Any]] = {
        "hello": {"protocol": 1, "format": rng.choice(["pcm_s16le", "pcm_f32le"]), "sample_rate": rng.choice([24000, 16000, 48000])},
        "speak": {"id": ident, "text": rng.choice(["Hi.", "One two.", "Fine, thanks"]), "voice": {"design": "calm"}, "final": rng.random() < 0.7},
        "text": {"id": ident, "text": "more words. "},
        "end": {"id": ident},
        "cancel": {"id": ident},
        "voice_begin": {"ref": ref, "name": "fuzz", "mime": rng.choice(["audio/wav", "audio/webm", "audio/ogg", "x/y"])},
        "voice_chunk": {"ref": ref, "data": data if binary else base64.b64encode(data).decode()},
        "voice_end": {"ref": ref},
        "ping": {"t": scalar(rng, binary=False) if rng.random() < 0.5 else "t"},
    }
    return {"type": kind, **shapes[kind]}


def mutate(rng: random.Random, message: dict[str, Any], *, binary: bool) -> dict[str, Any]:
    keys = [k for k in message if k != "type"] or ["type"]
    key = rng.choice(keys)
    roll = rng.random()
    if roll < 0.2:
        message.pop(key, None)
    elif roll < 0.45:
        message[key] = tree(rng, 3, binary=binary)
    elif roll < 0.65:
        message[key] = text_value(rng)
    elif roll < 0.75:
        message[key] = {"design": tree(rng, 2, binary=binary)} if key == "voice" else [message.get(key)] * rng.randrange(0, 3)
    elif roll < 0.85:
        message[rng.choice(["extra", "t", "id", "ref", "voice_id", "token"])] = tree(rng, 2, binary=binary)
    else:
        message["type"] = rng.choice(["Speak", "speak ", "ping\x00", "", "error", "ready", "pong", text_value(rng)[:300], 7, None, ["ping"]])
    return message


@dataclass
class Generated:
    frame: bytes | str
    what: str
    cancel_after: str | None = None
    """A valid speak's id: cancel it next, so the engine is not loaded for long."""


def encode(message: Any, *, binary: bool, rng: random.Random) -> bytes | str:
    if binary:
        try:
            packed: bytes = msgpack.packb(message, use_bin_type=rng.random() < 0.9, unicode_errors="surrogatepass")
            return packed
        except (OverflowError, ValueError, TypeError):
            return msgpack.packb({"type": "ping", "t": repr(message)[:100]}, unicode_errors="surrogatepass")

    def default(value: Any) -> Any:
        return base64.b64encode(value).decode() if isinstance(value, bytes) else repr(value)

    return json.dumps(message, default=default, ensure_ascii=True, allow_nan=True)


def generate(rng: random.Random, *, session_binary: bool) -> Generated:
    """One message; frames stay under ``MAX_FRAME`` (size limits are another test's subject)."""
    for _ in range(8):
        generated = _generate(rng, session_binary=session_binary)
        if len(generated.frame) <= MAX_FRAME:
            return generated
    return Generated(encode(valid(rng, "ping", binary=session_binary), binary=session_binary, rng=rng), "ping x0 mutations")


def _generate(rng: random.Random, *, session_binary: bool) -> Generated:
    binary = session_binary if rng.random() < 0.8 else not session_binary
    roll = rng.random()
    if roll < 0.62:
        kind = rng.choice(TYPES)
        message = valid(rng, kind, binary=binary)
        mutations = 0 if rng.random() < 0.15 else rng.randrange(1, 4)
        for _ in range(mutations):
            message = mutate(rng, message, binary=binary)
        frame = encode(message, binary=binary, rng=rng)
        cancel = message.get("id") if kind == "speak" and mutations == 0 and rng.random() < 0.85 else None
        return Generated(frame, f"{kind} x{mutations} mutations", cancel if isinstance(cancel, str) else None)
    if roll < 0.8:
        return Generated(encode(tree(rng, 5, binary=binary), binary=binary, rng=rng), "random tree")
    if roll < 0.87:
        return Generated(rng.randbytes(rng.randrange(0, 2048)), "random bytes")
    if roll < 0.93:
        whole = encode(valid(rng, rng.choice(TYPES), binary=binary), binary=binary, rng=rng)
        return Generated(whole[: rng.randrange(0, max(1, len(whole)))], "truncated")
    depth = rng.choice([100, 1000, 10_000, 100_000])
    if binary:
        return Generated(b"\x82\xa4type\xa4ping\xa1t" + b"\x91" * depth + b"\xc0", f"msgpack nested {depth}")
    return Generated('{"type":"ping","t":' + "[" * depth + "]" * depth + "}", f"JSON nested {depth}")


# --- sessions ------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    """Failures by kind (what went wrong, after which kind of message): one bug is one kind."""
    messages: int = 0

    def fail(self, kind: str, what: str) -> None:
        if not self.kinds[kind]:
            self.failures.append(what)  # the first of each kind, in full
        self.kinds[kind] += 1


def describe(generated: Generated) -> str:
    frame = generated.frame
    shown = frame[:300] if isinstance(frame, str) else frame[:200]
    return f"{generated.what}, {'binary' if isinstance(frame, bytes) else 'text'} frame of {len(frame)}: {shown!r}"


def decode(frame: bytes | str) -> dict[str, Any]:
    message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)
    assert isinstance(message, dict), f"the server sent a non-object: {message!r}"
    return message


class FuzzSession:
    """One connection: a pre-hello batch in lock-step, then messages each followed by a marker ping.

    The server handles a connection's frames in order, so an error that
    comes after marker ``k``'s pong and before marker ``k + 1``'s belongs to
    message ``k + 1`` (or to an utterance of an earlier one, for errors made
    while speaking).
    """

    def __init__(self, server: LiveServer, rng: random.Random, tally: Tally, binary: bool) -> None:
        self.server, self.rng, self.tally, self.binary = server, rng, tally, binary
        self.ws: ClientConnection | None = None
        self.sent: dict[int, Generated] = {}
        self.pongs: asyncio.Queue[int] = asyncio.Queue()
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """Replies while in lock-step (before and at hello)."""
        self.lock_step = True
        self.acked = -1
        self.closed = False
        self.messages = 0

    async def run(self, count: int) -> None:
        async with connect(self.server.ws_url, ssl=self.server.ssl_context(), max_size=None, ping_interval=None, compression=None) as ws:
            self.ws = ws
            reader = asyncio.create_task(self._read())
            try:
                if await self._before_hello() and await self._hello():
                    self.lock_step = False
                    await self._after_hello(count)
            finally:
                reader.cancel()

    async def _before_hello(self) -> bool:
        assert self.ws is not None
        for _ in range(BEFORE_HELLO):
            generated = self._next()
            self.sent[-1] = generated
            await self.ws.send(generated.frame)
            try:
                answer = await asyncio.wait_for(self.answers.get(), ANSWER_S)
            except asyncio.TimeoutError:
                return self._fail(f"no answer before hello to {generated.what}", f"no answer before hello to {describe(generated)}")
            if answer.get("type") == "ready":
                return True  # the generator made a valid hello: the session is open
        return not self.closed

    async def _hello(self) -> bool:
        assert self.ws is not None
        await self.ws.send(self._encode({"type": "hello", "protocol": 1}))
        for _ in range(BEFORE_HELLO + 1):
            try:
                answer = await asyncio.wait_for(self.answers.get(), ANSWER_S)
            except asyncio.TimeoutError:
                return self._fail("no answer to hello", "no answer to hello")
            if answer.get("type") == "ready" or answer.get("code") == "bad_message":
                return True  # ready, or "already received" after a generated hello
        return self._fail("hello refused", "hello got neither ready nor bad_message")

    async def _after_hello(self, count: int) -> None:
        assert self.ws is not None
        for n in range(count):
            generated = self._next()
            self.sent[n] = generated
            await self.ws.send(generated.frame)
            if generated.cancel_after:
                await self.ws.send(self._encode({"type": "cancel", "id": generated.cancel_after}))
            await self.ws.send(self._encode({"type": "ping", "t": f"{MARK}{n}"}))
            if n >= WINDOW and not await self._pong_of(n - WINDOW):
                return
        await self._pong_of(count - 1)

    def _next(self) -> Generated:
        self.messages += 1
        self.tally.messages += 1
        generated = generate(self.rng, session_binary=self.binary)
        self.tally.sent[generated.what.split(" x")[0]] += 1
        return generated

    def _encode(self, message: dict[str, Any]) -> bytes | str:
        return msgpack.packb(message) if self.binary else json.dumps(message)

    async def _pong_of(self, n: int) -> bool:
        while self.acked < n:
            try:
                got = await asyncio.wait_for(self.pongs.get(), ANSWER_S)
            except asyncio.TimeoutError:
                culprit = self.sent[self.acked + 1]
                return self._fail(f"dead after {culprit.what}", f"dead session: no pong in {ANSWER_S:.0f} s after {describe(culprit)}")
            if got < 0:
                return False  # closed: already reported
        return True

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                self._route(decode(frame))
        except ConnectionClosed:
            pass
        self.closed = True
        culprit = self.sent.get(-1 if self.lock_step else self.acked + 1)
        self._fail(f"closed {self.ws.close_code} after {culprit.what if culprit else 'nothing'}",
                   f"the server closed the connection ({self.ws.close_code} {self.ws.close_reason!r}) after {describe(culprit) if culprit else 'nothing'}")
        self.pongs.put_nowait(-1)
        self.answers.put_nowait({"type": "closed"})

    def _route(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        self.tally.replies[str(message.get("code") if kind == "error" else kind)] += 1
        t = message.get("t")
        if kind == "pong" and isinstance(t, str) and t.startswith(MARK):
            self.acked = int(t[len(MARK):])
            self.pongs.put_nowait(self.acked)
            return
        if kind == "error":
            code = message.get("code")
            if code == "internal" or code not in CODES or message.get("fatal"):
                culprit = self.sent.get(-1 if self.lock_step else self.acked + 1)
                self._fail(f"{code} after {culprit.what if culprit else 'nothing'}", f"error {message} after {describe(culprit) if culprit else 'nothing'}")
        if self.lock_step and kind in ("error", "ready"):
            self.answers.put_nowait(message)

    def _fail(self, kind: str, what: str) -> bool:
        self.tally.fail(kind, what)
        return False


async def fuzz_sessions(server: LiveServer, total: int, seed: int) -> Tally:
    tally = Tally()

    async def one(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        left = total // SESSIONS
        rounds = 0
        while left > 0 and sum(tally.kinds.values()) < MAX_FAILURES:
            session = FuzzSession(server, rng, tally, binary=(index + rounds) % 2 == 0)
            await session.run(min(PER_ROUND, max(1, left - BEFORE_HELLO)))
            left -= session.messages
            rounds += 1

    await asyncio.gather(*(one(i) for i in range(SESSIONS)))
    return tally


def tracebacks(log: str, limit: int = 5) -> str:
    """The distinct tracebacks in the server's log (by their last line), with how often each came."""
    seen: dict[str, tuple[int, str]] = {}
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line.strip()]
        last = next((line for line in lines if not line.startswith((" ", "During handling"))), lines[-1] if lines else "?")
        count, first = seen.get(last, (0, block))
        seen[last] = (count + 1, first)
    shown = [f"{n} x {last}:\nTraceback (most recent call last):{block[:3000]}" for last, (n, block) in list(seen.items())[:limit]]
    return "\n---\n".join(shown)


@pytest.mark.timeout(max(300, MESSAGES // 50))
async def test_fuzzed_messages_get_no_internal_error_and_kill_no_session(server: LiveServer) -> None:
    log_before = len(server.log())
    started = time.monotonic()
    tally = await fuzz_sessions(server, MESSAGES, SEED)
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {tally.messages} messages (seed {SEED}) over {SESSIONS} sessions in {elapsed:.0f} s; "
          f"sent {dict(tally.sent.most_common())}; replies {dict(tally.replies.most_common())}")
    new_log = server.log()[log_before:]
    kinds = "\n".join(f"  {n} x {kind}" for kind, n in tally.kinds.most_common())
    assert not tally.failures, f"failures by kind:\n{kinds}\n\n" + "\n\n".join(tally.failures[:10]) + "\n\nserver log:\n" + tracebacks(new_log)
    assert tally.messages >= MESSAGES - SESSIONS
    # The generator reaches every layer: decoding, parsing, the hello rule, utterances and uploads.
    assert {"bad_message", "unknown_type", "not_ready", "unknown_id"} <= set(tally.replies), tally.replies
    assert tally.replies["audio"] and tally.replies["done"] and tally.replies["pong"] > MESSAGES * 0.9, tally.replies
