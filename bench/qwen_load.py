"""Load mode for the Qwen engine: N streams in a closed loop, what listeners get and where the round goes.

    python -m bench.qwen_load                                         # tiny random models, CPU, engine in process
    python -m bench.qwen_load --random 1.7b --suppress-eos --frames 48 \\
        --levels clone:1,8,16,32,64 design:1,16,64 mixed:32+32 --out OUT   # the GPU table (bench/gpu/run_qwen.sh)
    python -m bench.qwen_load --serve --levels design:1,16                 # through the real server (wss, TLS)

Every stream asks for its next utterance as soon as the last one has ended
(a closed loop: the engine is never idle, and nobody waits for playback).
A level runs ``--warmup`` seconds unmeasured, then a window of ``--window``
seconds; then no stream starts again and the ones still speaking finish.
Per level:

* audio s/s: seconds of audio whose chunk arrived inside the window, per second;
* TTFA p50/p95/p99: request to first chunk, for utterances sent in the window;
* x real time: each utterance's audio over its wall time (median, and the 5th
  percentile: the slowest streams);
* underruns: a player per utterance starts 100 ms (``--jitter-ms``) after the
  first chunk and plays at real speed; every time it runs dry is one underrun,
  and the gaps add up to starved ms (``bench.player``);
* engine mode only: step ms per batch bucket (one decode step of every row:
  the code predictor's loop and a talker step, the copy to the host included),
  the codec's, prefill's and the rest's (host: bookkeeping, mailboxes) share of
  the model thread's time, and GPU memory.

A level is ``voice:N`` (voice ``design`` or ``clone``) or ``mixed:A+B`` (A
designed and B cloned streams at once, one batch per model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.engines.base import SAMPLE_RATE, Reference, SynthesisRequest, Voice

from . import stats
from .player import Player
from .qwen_compare import INSTRUCT, TEXT, reference_audio

Speak = Callable[[str, Callable[[float, np.ndarray], None]], Awaitable[str | None]]
"""(voice kind, on_chunk(arrival, pcm)) -> an error code or None: one utterance."""


@dataclass(frozen=True)
class LevelSpec:
    name: str
    voices: tuple[str, ...]
    """One voice kind per stream."""

    @classmethod
    def parse(cls, spec: str) -> list[LevelSpec]:
        """``clone:1,8,16`` -> three levels; ``mixed:32+32`` -> one level of 32 design + 32 clone streams."""
        kind, _, counts = spec.partition(":")
        if kind == "mixed":
            design, _, clone = counts.partition("+")
            return [cls(f"mixed {design}+{clone}", ("design",) * int(design) + ("clone",) * int(clone))]
        if kind not in ("design", "clone"):
            raise SystemExit(f"unknown level {spec!r}: design:N, clone:N or mixed:A+B")
        return [cls(f"{kind} {n}", (kind,) * int(n)) for n in counts.split(",") if n]


@dataclass
class Utterance:
    stream: int
    voice: str
    sent: float
    first: float | None = None
    end: float | None = None
    audio_s: float = 0.0
    underruns: int = 0
    starved_s: float = 0.0
    error: str | None = None


@dataclass
class _Level:
    t_window: float
    t_end: float
    utterances: list[Utterance] = field(default_factory=list)
    arrivals: list[tuple[float, int]] = field(default_factory=list)


async def _utter(speak: Speak, stream: int, voice: str, level: _Level, jitter_ms: float) -> None:
    player = Player(SAMPLE_RATE, jitter_ms=jitter_ms)
    u = Utterance(stream, voice, time.perf_counter())

    def on_chunk(arrived: float, pcm: np.ndarray) -> None:
        player.feed(arrived, pcm)
        level.arrivals.append((arrived, len(pcm)))

    u.error = await speak(voice, on_chunk)
    u.end = time.perf_counter()
    u.first, u.audio_s, u.underruns, u.starved_s = player.first_arrival, player.audio_s, player.underruns, player.starved_s
    level.utterances.append(u)


async def run_level(
    speak: Speak, spec: LevelSpec, *, warmup_s: float, window_s: float, jitter_ms: float, on_window: Callable[[], None], on_end: Callable[[], Any]
) -> tuple[dict[str, Any], Any]:
    """One level: the figures, and what ``on_end`` returned at the window's end (engine statistics)."""
    t0 = time.perf_counter()
    level = _Level(t0 + warmup_s, t0 + warmup_s + window_s)

    async def loop(stream: int, voice: str) -> None:
        while time.perf_counter() < level.t_end:
            await _utter(speak, stream, voice, level, jitter_ms)

    async def clock() -> Any:
        await asyncio.sleep(max(0.0, level.t_window - time.perf_counter()))
        on_window()
        await asyncio.sleep(max(0.0, level.t_end - time.perf_counter()))
        return on_end()

    results = await asyncio.gather(clock(), *(loop(i, v) for i, v in enumerate(spec.voices)))
    return summarize(spec, level, window_s), results[0]


def summarize(spec: LevelSpec, level: _Level, window_s: float) -> dict[str, Any]:
    inside = [u for u in level.utterances if level.t_window <= u.sent < level.t_end]
    good = [u for u in inside if u.error is None and u.first is not None and u.end is not None]
    samples = sum(n for t, n in level.arrivals if level.t_window <= t < level.t_end)
    ttfa = stats.percentiles(1000 * (u.first - u.sent) for u in good if u.first is not None)
    speed = [u.audio_s / (u.end - u.sent) for u in good if u.end is not None and u.end > u.sent]
    return {
        "level": spec.name,
        "streams": len(spec.voices),
        "utterances": len(inside),
        "errors": sum(u.error is not None for u in inside),
        "audio_per_s": round(samples / SAMPLE_RATE / window_s, 2),
        "ttfa_ms": ttfa,
        "x_real_time_p50": stats.median(speed),
        "x_real_time_p5": stats.percentile(speed, 5),
        "underruns": sum(u.underruns for u in good),
        "underrun_utterances": sum(u.underruns > 0 for u in good),
        "starved_ms": round(1000 * sum(u.starved_s for u in good), 1),
        "audio_s_per_utterance": stats.median(u.audio_s for u in good),
    }


# -- the engine in this process -------------------------------------------------


@contextlib.asynccontextmanager
async def engine_speaker(args: argparse.Namespace) -> AsyncIterator[tuple[Speak, Any]]:
    """A started QwenEngine (EOS suppressed if asked) and the function that speaks through it."""
    import torch

    from server.engines.qwen.engine import QwenEngine

    from .qwen_engine import suppress_engine_eos

    generation = {"max_new_tokens": args.frames + 1} if args.frames else None
    engine = QwenEngine(
        args.design_model, args.base_model, device=args.device, dtype=args.dtype, generation=generation,
        max_frames=max(args.frames or 0, 1500), rows=args.rows, decode=args.decode, predictor=args.predictor,
        talker=args.talker,
    )  # fmt: skip
    await engine.start()
    if args.suppress_eos:
        suppress_engine_eos(engine)
    voices = {"design": Voice(design=INSTRUCT), "clone": Voice(reference=Reference(reference_audio(), key="bench"))}

    async def speak(kind: str, on_chunk: Callable[[float, np.ndarray], None]) -> str | None:
        async for chunk in engine.synthesize(SynthesisRequest(TEXT, voices[kind], language="english")):
            on_chunk(time.perf_counter(), chunk)
        return None

    try:
        for kind in voices:  # first-call costs (clone prompt, allocator) outside the levels
            await speak(kind, lambda t, pcm: None)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        yield speak, engine
    finally:
        await engine.close()


def engine_window(engine: Any) -> None:
    """Forget the statistics of what ran before the window."""
    for kind, runtime in engine.manager.loaded().items():
        runtime.batch.step_s.clear()
        engine.scheduler(kind).stats.clear()


def engine_figures(engine: Any) -> dict[str, Any]:
    """Step ms per bucket, the shares of the model threads' time, GPU memory: what ran in the window."""
    import torch

    steps: dict[str, dict[int, float]] = {}
    total = {"round": 0.0, "step": 0.0, "codec": 0.0, "prefill": 0.0}
    codecs = {kind: type(runtime.codec).__name__ for kind, runtime in engine.manager.loaded().items()}
    for kind, runtime in engine.manager.loaded().items():
        buckets = {b: list(times) for b, times in runtime.batch.step_s.items() if times}
        steps[kind] = {b: round(1000 * statistics.median(t), 2) for b, t in sorted(buckets.items())}
        s = engine.scheduler(kind).stats
        total["round"] += sum(s.round_s)
        total["codec"] += sum(s.codec_s)
        total["prefill"] += sum(s.prefill_s)
        total["step"] += sum(sum(t) for t in buckets.values())
    busy = total["round"] + total["prefill"]
    out: dict[str, Any] = {"step_ms": steps, "codec": codecs, "graphs": graphs_captured(engine)}
    if busy > 0:
        out["share"] = {
            "step": round(total["step"] / busy, 3),
            "codec": round(total["codec"] / busy, 3),
            "prefill": round(total["prefill"] / busy, 3),
            "host": round(max(0.0, busy - total["step"] - total["codec"] - total["prefill"]) / busy, 3),
        }
    if torch.cuda.is_available():
        free, whole = torch.cuda.mem_get_info()
        out["gpu_gib"] = {
            "peak_allocated": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved": round(torch.cuda.memory_reserved() / 2**30, 2),
            "used_of_total": f"{(whole - free) / 2**30:.1f}/{whole / 2**30:.1f}",
        }
    return out


def graphs_captured(engine: Any) -> dict[str, dict[str, int]]:
    """Graphs each loaded model captured: a capture that failed falls back to eager, and the table must say so."""
    health = {kind: runtime.health() for kind, runtime in engine.manager.loaded().items()}
    return {kind: {"decode": h["graphs"], "codec": h["codec_graphs"]} for kind, h in health.items()}


# -- through the server ------------------------------------------------------------


@contextlib.asynccontextmanager
async def server_speaker(args: argparse.Namespace) -> AsyncIterator[tuple[Speak, Any]]:
    """Sessions over wss against ``--url``, or against a server started here with the two model dirs (``--serve``)."""
    from .qwen_serve import served
    from .transport import VoiceSpec, WssOptions, WssTransport

    async with served(args) as (url, ca, token):
        transport = WssTransport(WssOptions(url, ca, args.insecure, token))
        await transport.start()
        specs = {"design": VoiceSpec("design", design=INSTRUCT)}
        if any("clone" in level.voices for level in args.plan):
            specs["clone"] = VoiceSpec("clone", voice_id=await transport.clone_voice(INSTRUCT, TEXT))
        idle: dict[str, list[Any]] = {"design": [], "clone": []}

        async def speak(kind: str, on_chunk: Callable[[float, np.ndarray], None]) -> str | None:
            stream = idle[kind].pop() if idle[kind] else await transport.open()
            outcome = await stream.utter(TEXT, specs[kind], lambda t, pcm: on_chunk(t, pcm))
            idle[kind].append(stream)  # a session per stream, kept across its utterances
            return outcome.error

        try:
            yield speak, None
        finally:
            for streams in idle.values():
                for stream in streams:
                    await stream.close()
            await transport.close()


# -- reporting ---------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| level | streams | audio s/s | TTFA p50 / p95 / p99 ms | x real time p50 (p5) | underruns (utterances) | starved ms | utterances | step ms per bucket | step / codec / prefill / host |",
        "|---|---:|---:|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        t = r["ttfa_ms"]
        ttfa = " / ".join(stats.fmt(t.get(k)) for k in ("p50", "p95", "p99"))
        speed = f"{stats.fmt(r['x_real_time_p50'], 2)} ({stats.fmt(r['x_real_time_p5'], 2)})"
        engine = r.get("engine") or {}
        step = "; ".join(f"{kind} " + ", ".join(f"{b}: {ms}" for b, ms in buckets.items()) for kind, buckets in engine.get("step_ms", {}).items() if buckets)
        share = engine.get("share") or {}
        shares = " / ".join(f"{share[k]:.0%}" for k in ("step", "codec", "prefill", "host")) if share else "–"
        lines.append(
            f"| {r['level']} | {r['streams']} | {r['audio_per_s']:.1f} | {ttfa} | {speed} | {r['underruns']} ({r['underrun_utterances']}) "
            f"| {r['starved_ms']:.0f} | {r['utterances']}{' (' + str(r['errors']) + ' errors)' if r['errors'] else ''} | {step or '–'} | {shares} |"
        )
    memory = [r["engine"]["gpu_gib"] for r in rows if (r.get("engine") or {}).get("gpu_gib")]
    codecs = {kind: name for r in rows for kind, name in ((r.get("engine") or {}).get("codec") or {}).items()}
    if codecs:
        lines += ["", "Codec: " + ", ".join(f"{kind} {name}" for kind, name in sorted(codecs.items()))]
    graphs = {kind: counts for r in rows for kind, counts in ((r.get("engine") or {}).get("graphs") or {}).items()}
    if graphs:
        lines += ["", "Graphs captured (step and prefill; codec): " + ", ".join(f"{k} {c['decode']}; {c['codec']}" for k, c in sorted(graphs.items()))]
    if memory:
        lines += ["", f"GPU memory (GiB) after the last level: {memory[-1]}"]
    return "\n".join(lines)


async def run(args: argparse.Namespace, on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """Every level of ``args.plan`` in turn; ``on_row`` sees the rows so far after each level."""
    speaker = server_speaker if args.serve or args.url else engine_speaker
    rows: list[dict[str, Any]] = []
    async with speaker(args) as (speak, engine):
        on_window = (lambda: engine_window(engine)) if engine is not None else (lambda: None)
        on_end = (lambda: engine_figures(engine)) if engine is not None else (lambda: None)
        for spec in args.plan:
            row, figures = await run_level(speak, spec, warmup_s=args.warmup, window_s=args.window, jitter_ms=args.jitter_ms, on_window=on_window, on_end=on_end)
            row["engine"] = figures
            rows.append(row)
            print("row", json.dumps(row), flush=True)
            on_row(rows)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.qwen_load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--design-model")
    add("--base-model")
    add("--random", choices=["tiny", "0.6b", "1.7b"], help="build random-weight models of this size (default tiny)")
    add("--models-dir", help="where --random builds (reused when complete)")
    add("--device")
    add("--dtype", help="float32 on CPU, bfloat16 on GPU by default")
    add("--rows", type=int, default=64, help="decode rows per model at most")
    add("--decode", default="auto", choices=["auto", "graphs", "eager"])
    add("--predictor", default="folded", choices=["folded", "compiled", "eager"], help="the engine's code predictor (in process only)")
    add("--talker", default="modules", choices=["modules", "compiled"], help="the engine's talker step (in process only)")
    add("--frames", type=int, help="frames per utterance (with --suppress-eos: exactly)")
    add("--suppress-eos", action="store_true")
    add("--levels", nargs="+", default=["design:1,16"], help="design:N,.. clone:N,.. mixed:A+B")
    add("--warmup", type=float, default=2.0, help="seconds of each level before the window")
    add("--window", type=float, default=10.0, help="measured seconds per level")
    add("--jitter-ms", type=float, default=100.0)
    add("--serve", action="store_true", help="start the real server here with the model dirs and load it over wss")
    add("--url", help="load a running server (wss://.../v1/stream) instead of the engine in process")
    add("--ca", help="the server's CA certificate (PEM)")
    add("--token")
    add("--insecure", action="store_true")
    add("--out", type=Path, help="write load.json and load.md here")
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    args.plan = [level for spec in args.levels for level in LevelSpec.parse(spec)]
    if not args.url and not args.design_model:
        from .qwen_models import build_models

        size = args.random or "tiny"
        device = args.device or ("cuda:0" if size != "tiny" and _cuda() else "cpu")
        root = args.models_dir or tempfile.mkdtemp(prefix=f"qwen-{size}-")
        started = time.perf_counter()
        args.design_model, args.base_model = map(str, build_models(root, size, device=device, dtype=args.dtype))
        print(f"built {size} models in {time.perf_counter() - started:.1f}s: {root}", flush=True)
    rows = asyncio.run(run(args, on_row=lambda rows: save(args, rows)))
    print(table(rows))
    return rows


def save(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """The table and the samples so far, in ``--out``: a run cut short keeps every level it finished."""
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps({"args": _jsonable(vars(args)), "rows": rows}, indent=1))
        (args.out / "load.md").write_text(table(rows) + "\n")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else [asdict(x) for x in v] if k == "plan" else v) for k, v in values.items()}


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    main()
