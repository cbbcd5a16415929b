"""Sessions, the two load models, one concurrency level, and the ramp.

listeners: sessions arrive at random moments over the first seconds of the
level; each asks for its next text once the previous one has finished
playing (the simulated player's clock) and a short pause has passed, which
is how people use a voice.
saturation: every session asks again as soon as ``done`` arrives: the
server's throughput, with nobody waiting for playback.

Every level is bounded: no new utterance starts after ``duration_s`` (or
once ``count`` measured utterances are done; a level short of ``min_count``
goes on until it has them, but never past ``max_duration_s``), and what is
still running ``grace_s`` later is cancelled and counted as a ``timeout``
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import stats
from .corpus import Corpus, Item
from .player import Player
from .probe import CpuMeter, ServerMetrics, delta
from .transport import Outcome, Stream, Transport, VoiceSpec, aclose_quietly


@dataclass
class LoadConfig:
    model: str = "listeners"
    duration_s: float = 20.0
    warmup_s: float = 3.0
    """Utterances sent before this are run but left out of the figures."""
    count: int | None = None
    """Stop a level once this many measured utterances are done."""
    min_count: int = 0
    """Low levels of listeners finish few texts; go on past ``duration_s`` until this many are done."""
    max_duration_s: float = 120.0
    jitter_ms: float = 100.0
    pause_s: float = 0.5
    """Listeners: mean pause after playback ends (uniform, 0.5x to 1.5x)."""
    arrival_s: float = 3.0
    """Listeners: sessions arrive uniformly over this window."""
    grace_s: float = 30.0
    seed: int = 1
    target_ms: float = 300.0
    stop_p95_ms: float | None = 3000.0
    """The ramp stops after a level whose p95 TTFA passes this."""


@dataclass
class Level:
    level: int
    model: str
    transport: str
    wall_s: float
    window_s: float
    samples: list[dict[str, Any]]
    cpu: dict[str, float | None]
    server: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    t0: float
    t_end: float
    t_hard: float
    stop: asyncio.Event
    config: LoadConfig
    level: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    open_sessions: int = 0
    measured_done: int = 0
    stopped_at: float | None = None

    def close(self) -> None:
        """No new utterances from now on."""
        if not self.stop.is_set():
            self.stopped_at = time.perf_counter()
            self.stop.set()

    def finish_if_counted(self) -> None:
        if self.config.count is not None and self.measured_done >= self.config.count:
            self.close()

    def accepting(self) -> bool:
        now = time.perf_counter()
        if self.stop.is_set() or now >= self.t_hard:
            return False
        return now < self.t_end or self.measured_done < self.config.min_count


def record(state: _State, session: int, voice: VoiceSpec, item: Item, outcome: Outcome, player: Player) -> dict[str, Any]:
    done = outcome.done or {}
    sent = outcome.sent
    sample = {
        "level": state.level,
        "session": session,
        "voice": voice.mode,
        "kind": item.kind,
        "item": item.index,
        "t": round(sent - state.t0, 4),
        "measured": sent - state.t0 >= state.config.warmup_s,
        "ttfa_ms": _ms(player.first_arrival, sent),
        "heard_ms": _ms(player.heard, sent),
        "server_ttfa_ms": done.get("ttfa_ms"),
        "rtf": done.get("rtf"),
        "audio_ms": round(player.audio_s * 1000, 1),
        "last_ms": _ms(player.last_arrival, sent),
        "play_end_ms": _ms(player.end, sent),
        "underruns": player.underruns,
        "starved_ms": round(player.starved_s * 1000, 1),
        "error": outcome.error or (("cancelled" if done.get("cancelled") else None) if done else "no_done"),
    }
    state.samples.append(sample)
    if sample["measured"]:
        state.measured_done += 1
        state.finish_if_counted()
    return sample


def _ms(t: float | None, since: float) -> float | None:
    return None if t is None else round((t - since) * 1000, 2)


async def _sleep_until(state: _State, when: float) -> bool:
    """Sleep until ``when`` (perf_counter); False if the level stopped meanwhile."""
    delay = when - time.perf_counter()
    if delay > 0:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.stop.wait(), timeout=delay)
    return state.accepting()


async def session(state: _State, transport: Transport, corpus: Corpus, voice: VoiceSpec, index: int) -> None:
    config = state.config
    rng = random.Random(config.seed * 1_000_003 + state.level * 1009 + index)
    playlist = corpus.playlist(rng)
    if config.model == "listeners" and not await _sleep_until(state, state.t0 + rng.uniform(0, config.arrival_s)):
        return
    stream: Stream | None = None
    try:
        for turn in range(1_000_000):
            if not state.accepting():
                break
            if stream is None:
                stream = await transport.open()
                state.open_sessions += 1
            item = playlist[turn % len(playlist)]
            player = Player(transport.sample_rate, config.jitter_ms)
            outcome = Outcome(time.perf_counter())
            try:
                outcome = await stream.utter(item.text, voice, player.feed)
            except asyncio.CancelledError:
                outcome.error = "timeout"
                record(state, index, voice, item, outcome, player)
                raise
            record(state, index, voice, item, outcome, player)
            if outcome.error == "closed":
                state.open_sessions -= 1
                await aclose_quietly(stream)
                stream = None
            if config.model == "listeners":
                pause = config.pause_s * rng.uniform(0.5, 1.5)
                if not await _sleep_until(state, (player.end or time.perf_counter()) + pause):
                    break
    except (OSError, asyncio.TimeoutError) as exc:
        state.samples.append({"level": state.level, "session": index, "voice": voice.mode, "measured": True, "error": f"connect: {type(exc).__name__}"})
    finally:
        if stream is not None:
            state.open_sessions -= 1
            await aclose_quietly(stream)


ProgressFn = Callable[[_State, float], None]


async def run_level(
    transport: Transport, corpus: Corpus, voices: list[VoiceSpec], level: int, config: LoadConfig,
    progress: ProgressFn | None = None, server_pid: int | None = None,
) -> Level:
    t0 = time.perf_counter()
    hard = t0 + max(config.duration_s, config.max_duration_s)
    state = _State(t0, t0 + config.duration_s, hard, asyncio.Event(), config, level)
    metrics = ServerMetrics(transport.metrics_url())
    async with contextlib.AsyncExitStack() as stack:
        if metrics.url:
            metrics.http = await stack.enter_async_context(_metrics_client(transport))
        before = await metrics.scrape()
        meter = CpuMeter(server_pid)
        meter.begin()
        tasks = [asyncio.create_task(session(state, transport, corpus, voices[i % len(voices)], i)) for i in range(level)]
        watchers = [asyncio.create_task(metrics.watch())]
        if progress is not None:
            watchers.append(asyncio.create_task(_progress_loop(state, progress)))
        await _wait_bounded(state, tasks, config)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        after = await metrics.scrape()
    cpu_s = None
    if before and after and "process_cpu_seconds_total" in after:
        cpu_s = after["process_cpu_seconds_total"] - before.get("process_cpu_seconds_total", 0.0)
    cpu = meter.end(cpu_s)
    end = state.stopped_at or state.t_hard
    window = max(min(end, time.perf_counter()) - (t0 + config.warmup_s), 1e-3)
    server = {
        "peak_queue_depth": metrics.peak_queue if metrics.url else None,
        "peak_active_utterances": metrics.peak_active if metrics.url else None,
        "histograms": delta(before, after, "minestream_") if before and after else {},
    }
    result = Level(level, config.model, transport.name, round(time.perf_counter() - t0, 3), round(window, 3), state.samples, cpu, server)
    if progress is not None:
        progress(state, -1.0)
    return result


def _metrics_client(transport: Transport) -> Any:
    maker = getattr(transport, "http", None)
    if maker is None:
        import httpx

        return httpx.AsyncClient(timeout=10)
    return maker()


async def _wait_bounded(state: _State, tasks: list[asyncio.Task[None]], config: LoadConfig) -> None:
    """Until every session ends, or the level's time and then its grace are up."""
    pending = set(tasks)
    while pending:
        now = time.perf_counter()
        if not state.stop.is_set() and now >= state.t_end and (state.measured_done >= config.min_count or now >= state.t_hard):
            state.close()
        if state.stopped_at is not None and now >= state.stopped_at + config.grace_s:
            break
        _, pending = await asyncio.wait(pending, timeout=0.25)
    state.close()
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _progress_loop(state: _State, progress: ProgressFn) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(state, time.perf_counter() - state.t0)


def print_progress(state: _State, elapsed: float) -> None:
    """One line per level, rewritten in place on a terminal (per-second lines otherwise, every 5 s)."""
    measured = [s for s in state.samples if s.get("measured")]
    done = len(state.samples)
    p50 = stats.median(s.get("ttfa_ms") for s in measured)
    p95 = stats.percentile((s.get("ttfa_ms") for s in measured), 95)
    errors = sum(1 for s in state.samples if s.get("error"))
    underruns = sum(s.get("underruns", 0) for s in measured)
    clock = "done" if elapsed < 0 else f"{elapsed:5.1f}/{state.config.duration_s:.0f}s"
    line = (f"[{state.config.model}] level {state.level:3d} {clock}  sessions {state.open_sessions:3d}/{state.level}  "
            f"utterances {done:4d}  TTFA p50 {stats.fmt(p50)} ms p95 {stats.fmt(p95)} ms  underruns {underruns}  errors {errors}")
    if sys.stderr.isatty():
        print("\r" + line.ljust(120), end="\n" if elapsed < 0 else "", file=sys.stderr, flush=True)
    elif elapsed < 0 or int(elapsed) % 5 == 0:
        print(line, file=sys.stderr, flush=True)


async def ramp(
    transport: Transport, corpus: Corpus, voices: list[VoiceSpec], levels: list[int], config: LoadConfig,
    progress: ProgressFn | None = None, server_pid: int | None = None, settle_s: float = 2.0,
) -> tuple[list[Level], str | None]:
    """Levels in order; stops early (and says why) once one is far past the target."""
    from .report import summarize

    results: list[Level] = []
    for position, level in enumerate(levels):
        result = await run_level(transport, corpus, voices, level, config, progress, server_pid)
        result.summary = summarize(result, config)
        results.append(result)
        p95 = result.summary["ttfa_ms"]["p95"]
        if config.stop_p95_ms is not None and p95 is not None and p95 > config.stop_p95_ms and position + 1 < len(levels):
            return results, f"stopped after level {level}: p95 TTFA {p95:.0f} ms > {config.stop_p95_ms:.0f} ms"
        if position + 1 < len(levels):
            await asyncio.sleep(settle_s)  # let the server drain before the next level
    return results, None


def as_dict(level: Level) -> dict[str, Any]:
    return asdict(level)
