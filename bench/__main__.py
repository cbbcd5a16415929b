"""``python -m bench``: drive a MineStream server (or its engine) and report what listeners would get.

    python -m bench --url wss://localhost:8443/v1/stream --ca certs/ca.pem          # the ramp
    python -m bench --preset core --url ... --ca ...                                 # median TTFA, short sentences
    python -m bench --level 16 --duration 60 --url ... --ca ...                      # one level for a set time
    python -m bench --engine-direct --levels 1,4,16                                  # no network: engine time only
    python -m bench --compare A.json B.json                                          # two runs side by side
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import corpus as corpus_module
from . import stats
from .compare import compare
from .load import LoadConfig, print_progress, ramp
from .report import document, load_json, markdown, write_json
from .transport import Transport, VoiceSpec, make_transport

RAMP = [1, 2, 4, 8, 16, 32, 64]
PRESETS: dict[str, dict[str, Any]] = {
    # The core issue's figure: median TTFA over 20 short sentences, one session, back to back.
    "core": {"levels": "1", "model": "saturation", "sentences": "short", "count": 20, "warmup": 1.0, "voices": "design", "duration": 60.0},
    # The published ramp: listeners, every sentence class, designed and cloned voices.
    "ramp": {"levels": ",".join(map(str, RAMP)), "model": "listeners", "duration": 40.0, "warmup": 5.0, "min_count": 20, "max_duration": 120.0},
    # A few seconds, to see that everything works.
    "quick": {"levels": "1,2", "duration": 4.0, "warmup": 0.5, "grace": 10.0},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--preset", choices=sorted(PRESETS), help="core: 20 short sentences at level 1; ramp: the published ramp (default); quick: a smoke run")
    add("--url", default="wss://localhost:8443/v1/stream", help="the server's stream URL (the only address contacted)")
    add("--ca", help="CA certificate (PEM) the server's certificate is signed by, e.g. certs/ca.pem")
    add("--insecure", action="store_true", help="do not verify the server's certificate")
    add("--token", default=os.environ.get("MINESTREAM_TOKEN"), help="the server's token (default $MINESTREAM_TOKEN)")
    add("--transport", choices=("wss", "engine", "webrtc"), default="wss", help="wss (default), engine (no network), webrtc (bench/rtc.py)")
    add("--engine-direct", action="store_true", help="same as --transport engine")
    add("--engine", default="preview", help="engine-direct: which engine to build in this process (preview, qwen)")
    add("--levels", help=f"comma-separated concurrency levels (ramp default {','.join(map(str, RAMP))})")
    add("--level", type=int, help="one fixed level (same as --levels N)")
    add("--model", "--load", dest="model", choices=("listeners", "saturation"), default="listeners",
        help="listeners: next text after playback and a pause (default); saturation: next text as soon as done arrives")
    add("--duration", type=float, default=40.0, help="seconds per level during which new utterances start")
    add("--warmup", type=float, default=5.0, help="seconds at the start of each level left out of the figures")
    add("--count", type=int, help="end a level once this many measured utterances are done")
    add("--min-count", type=int, default=0, help="go on past --duration until a level has this many measured utterances")
    add("--max-duration", type=float, default=120.0, help="hard bound on a level's time for starting utterances (s)")
    add("--sentences", default="short,medium,long", help="sentence classes to speak")
    add("--voices", choices=("design", "clone", "both"), default="both", help="designed voices, a cloned voice, or sessions alternating")
    add("--jitter-ms", type=float, default=100.0, help="the simulated player's jitter buffer")
    add("--pause", type=float, default=0.5, help="listeners: mean pause after playback before the next request (s)")
    add("--arrival", type=float, default=3.0, help="listeners: sessions arrive at random over this many seconds")
    add("--grace", type=float, default=30.0, help="seconds after a level for in-flight utterances, then they are cancelled")
    add("--target-ms", type=float, default=300.0, help="p95 TTFA a level must stay under to pass")
    add("--stop-p95-ms", type=float, default=3000.0, help="stop the ramp after a level whose p95 TTFA passes this (0: never)")
    add("--seed", type=int, default=1)
    add("--server-pid", type=int, help="server process id, for CPU where /metrics is not reachable")
    add("--out", type=Path, help="output folder (default bench/out/<time>)")
    add("--no-plots", action="store_true")
    add("--quiet", action="store_true", help="no progress display")
    add("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="put two runs side by side and exit")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    first, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[first.preset or "ramp"])
    args = p.parse_args(argv)
    if args.engine_direct:
        args.transport = "engine"
    if args.level is not None:
        args.levels = str(args.level)
    return args


def load_config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        model=args.model, duration_s=args.duration, warmup_s=args.warmup, count=args.count, min_count=args.min_count, max_duration_s=args.max_duration, jitter_ms=args.jitter_ms,
        pause_s=args.pause, arrival_s=args.arrival, grace_s=args.grace, seed=args.seed, target_ms=args.target_ms,
        stop_p95_ms=args.stop_p95_ms or None,
    )


async def voices(transport: Transport, corpus: corpus_module.Corpus, mode: str) -> list[VoiceSpec]:
    designs = [VoiceSpec("design", design=d) for d in corpus.designs]
    if mode == "design":
        return designs
    # The clone's reference is the engine's own speech, so the run needs no audio file and no other address.
    voice_id = await transport.clone_voice(corpus.designs[0], "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.")
    clone = VoiceSpec("clone", voice_id=voice_id)
    if mode == "clone":
        return [clone]
    return [v for d in designs for v in (d, clone)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from .probe import environment

    config = load_config(args)
    classes = tuple(c.strip() for c in args.sentences.split(",") if c.strip())
    corpus = corpus_module.load(classes)
    levels = [int(x) for x in args.levels.split(",")]
    if any(n < 1 for n in levels):
        raise SystemExit("levels must be positive")
    transport = make_transport(args.transport, args)
    env = environment()
    try:
        engine = await transport.start()
        specs = await voices(transport, corpus, args.voices)
        results, note = await ramp(transport, corpus, specs, levels, config, None if args.quiet else print_progress, args.server_pid)
    finally:
        await transport.close()
    settings = {**vars(config), "transport": transport.name, "voices": args.voices, "sentences": list(classes), "levels": levels}
    settings["url"] = args.url if args.transport != "engine" else None
    return document(settings, env, engine, results, note)


def headline(doc: dict[str, Any]) -> str:
    """The figures the core issue asks for, from the first level."""
    s = doc["levels"][0]["summary"]
    return (f"level {doc['levels'][0]['level']}: median TTFA client {stats.fmt(s['ttfa_ms']['p50'], 1)} ms, "
            f"server {stats.fmt(s['server_ttfa_ms']['p50'], 1)} ms, heard {stats.fmt(s['heard_ms']['p50'], 1)} ms; "
            f"RTF median {stats.fmt(s['rtf']['p50'], 3)}; {s['utterances']} utterances, {s['errors']} errors")


def write(doc: dict[str, Any], out: Path, plots: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md"]
    write_json(doc, paths[0])
    paths[1].write_text(markdown(doc))
    if plots:
        from .plots import ttfa_plot, underrun_plot

        paths += [ttfa_plot(doc, out / "ttfa.png"), underrun_plot(doc, out / "underruns.png")]
    return paths


def _names(a: Path, b: Path) -> tuple[str, str]:
    """Short names for two result files: their stems, or their folders when the stems match (bench.json)."""
    if a.stem != b.stem:
        return a.stem, b.stem
    if a.parent.name != b.parent.name:
        return a.parent.name, b.parent.name
    return "A", "B"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.compare:
        a, b = (load_json(p) for p in args.compare)
        text = compare(a, b, _names(*args.compare))
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(text)
        return 0
    doc = asyncio.run(run(args))
    out = args.out or Path(__file__).resolve().parent / "out" / time.strftime("%Y%m%d-%H%M%S")
    paths = write(doc, out, not args.no_plots)
    print(markdown(doc))
    print(headline(doc))
    print("wrote", *paths, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
