"""Engine-level Qwen3-TTS benchmark: TTFA, per-step time, RTF at 1, 4 and 16 streams.

    python -m bench.qwen_engine                      # tiny random-weight models (CPU)
    python -m bench.qwen_engine --design-model Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign \\
        --base-model Qwen/Qwen3-TTS-12Hz-1.7B-Base  # real weights, GPU
    python -m bench.qwen_engine --random 1.7b --suppress-eos --frames 48 --streams 1,4,16 \\
        --runners engine,upstream,faster --results bench/RESULTS.md   # GPU, side by side
    python -m bench.qwen_engine --merge OUT.md --results bench/RESULTS.md  # fold a GPU run's table in

Measures the engine alone (no server, no network): N streams start at once,
one utterance each. TTFA is ``synthesize`` to its first chunk; a step is one
decode step of the model's batch (every live stream advanced one 80 ms frame
in one pass; the median of the steps at the level's batch bucket); RTF is a
stream's wall time over its audio duration. ``--random`` builds random-weight
models of the real architecture (``bench.qwen_models``) and runs every runner
on the same two dirs (``bench.qwen_compare``). The closed-loop load mode (audio
per second, TTFA percentiles, underruns) is ``bench.qwen_load``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from server.engines.base import SAMPLE_RATE, Reference, SynthesisRequest, Voice
from server.engines.qwen.engine import QwenEngine
from server.engines.qwen.graphs import bucket

from . import qwen_compare as compare
from .qwen_compare import INSTRUCT, TEXT

RUNNERS = ("engine", "upstream", "faster")


async def _one(engine: QwenEngine, voice: Voice) -> dict[str, float]:
    started = time.perf_counter()
    first: float | None = None
    samples = 0
    async for chunk in engine.synthesize(SynthesisRequest(TEXT, voice, language="english")):
        first = first if first is not None else time.perf_counter() - started
        samples += len(chunk)
    wall = time.perf_counter() - started
    return {"ttfa": first or wall, "wall": wall, "audio": samples / SAMPLE_RATE}


PHASES = ("admitted", "prompt", "prefill", "frames", "decoded")
"""Job.marks in order: queue wait, prompt building, prefill, the first chunk's frames, its decode."""


def _phases(jobs: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds each phase before the first audio took."""
    done = [j for j in jobs if all(k in j for k in PHASES)]
    if not done:
        return {}
    out = {}
    for before, phase in zip(("submitted", *PHASES), PHASES, strict=False):
        out[phase] = 1000 * statistics.median(j[phase] - j[before] for j in done)
    return out


def _step_times(engine: QwenEngine, kind: str, n: int) -> list[float]:
    """The steps the level's batch took at its bucket (all of them if none was that wide)."""
    assert engine.manager is not None, "start() made the manager"
    batch = engine.manager.loaded()[kind].batch
    wanted = batch.step_s.get(bucket(batch.batch_buckets, n))
    return list(wanted) if wanted else [t for times in batch.step_s.values() for t in times]


async def _level(engine: QwenEngine, kind: str, voice: Voice, n: int) -> dict[str, Any]:
    assert engine.manager is not None, "start() made the manager"
    for runtime in engine.manager.loaded().values():
        runtime.batch.step_s.clear()
    engine.recent_jobs.clear()
    results = await asyncio.gather(*(_one(engine, voice) for _ in range(n)))
    full = _step_times(engine, "design" if kind == "design" else "base", n)
    return {
        "phases_ms": _phases(list(engine.recent_jobs)),
        "streams": n,
        "ttfa_ms_p50": 1000 * statistics.median(r["ttfa"] for r in results),
        "ttfa_ms_max": 1000 * max(r["ttfa"] for r in results),
        "step_ms": 1000 * statistics.median(full),
        "step_ms_per_stream": 1000 * statistics.median(full) / n,
        "rtf": statistics.median(r["wall"] / r["audio"] for r in results),
        "audio_s": results[0]["audio"],
        "frames": round(results[0]["audio"] * SAMPLE_RATE / compare.SAMPLES_PER_FRAME),
    }


def suppress_engine_eos(engine: QwenEngine) -> None:
    """Patch every model the engine holds, and any it loads later (a swap reloads)."""
    manager = engine.manager
    assert manager is not None, "start() made the manager"
    for runtime in manager.loaded().values():
        compare.suppress_eos(runtime.tts)
    load = manager.loader

    def loader(source: str) -> Any:
        tts = load(source)
        compare.suppress_eos(tts)
        return tts

    manager.loader = loader


def _voices(kinds: list[str]) -> list[tuple[str, Voice]]:
    ref = Reference(compare.reference_audio(), key="bench")
    made = {"design": Voice(design=INSTRUCT), "clone": Voice(reference=ref)}
    return [(k, made[k]) for k in kinds]


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    generation = {"max_new_tokens": args.frames + 1} if args.frames else None
    engine = QwenEngine(
        args.design_model,
        args.base_model,
        device=args.device,
        dtype=args.dtype,
        generation=generation,
        max_frames=max(args.frames or 0, 1500),
        decode=args.decode,
    )
    await engine.start()
    if args.suppress_eos:
        suppress_engine_eos(engine)
    rows = []
    try:
        for kind, voice in _voices(args.voices):
            await _one(engine, voice)  # warm-up: first-call allocations, prompt cache
            for first in args.first_chunk:
                engine.chunk_frames = (first, engine.chunk_frames[1])
                runner = f"engine ({engine.decode}, first chunk {first})"
                for n in args.streams:
                    rows.append(row := {"runner": runner, "voice": kind, **await _level(engine, kind, voice, n)})
                    print("row", json.dumps(row), flush=True)
    finally:
        await engine.close()
    return rows


def run_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Every requested runner on the same dirs; rows and notes (skips, failures)."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    dirs = {"design": args.design_model, "clone": args.base_model}
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float32" if device == "cpu" else "bfloat16"))
    if "engine" in args.runners:
        rows += asyncio.run(run(args))
        compare._free()
    if "upstream" in args.runners:
        eos = not args.suppress_eos
        rows += compare.run_upstream(dirs, args.voices, args.streams, frames=args.frames, device=device, dtype=dtype, eos=eos)
    if "faster" in args.runners:
        got, why = compare.run_faster(
            dirs, args.voices, args.streams, frames=args.frames, device=device, dtype=dtype, chunks=args.first_chunk
        )
        rows += got
        if why:
            notes.append(f"faster-qwen3-tts skipped: {why}")
    return rows, notes


def _ints(values: list[str]) -> list[int]:
    return [int(v) for value in values for v in value.split(",") if v]


def _words(values: list[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design-model")
    parser.add_argument("--base-model")
    parser.add_argument("--random", choices=["tiny", "0.6b", "1.7b"], help="build random-weight models of this size")
    parser.add_argument("--models-dir", help="where --random builds (reused when complete); default: a temp dir")
    parser.add_argument("--device")
    parser.add_argument("--dtype", help="float32 on CPU, bfloat16 on GPU by default")
    parser.add_argument("--streams", nargs="+", default=["1", "4", "16"], help="e.g. 1,4,16")
    parser.add_argument("--frames", type=int, default=None, help="cap frames per stream (tiny models: 24)")
    parser.add_argument("--suppress-eos", action="store_true", help="no stream ends before --frames")
    parser.add_argument("--voices", nargs="+", default=["design", "clone"], help="design,clone")
    parser.add_argument("--runners", nargs="+", default=["engine"], help=f"any of {','.join(RUNNERS)}")
    parser.add_argument("--decode", default="auto", choices=["auto", "graphs", "eager"], help="the batch's step: CUDA graphs or op by op")
    parser.add_argument("--first-chunk", nargs="+", default=["4"], help="frames in the first chunk; e.g. 4,2 runs both")
    parser.add_argument("--results", type=Path, help="update the GPU section of this Markdown file")
    parser.add_argument("--merge", type=Path, nargs="*", help="only fold these files' tables into --results")
    return parser


def _heading(args: argparse.Namespace, device: str) -> str:
    size = args.random or "given model dirs"
    return (
        f"### {size} on {compare.device_name(device)}: {args.dtype or 'default dtype'}, "
        f"torch {torch.__version__}, {args.frames or 'uncapped'} frames per stream"
        f"{', EOS suppressed' if args.suppress_eos else ''}"
    )


def main() -> None:
    args = _parser().parse_args()
    if args.merge is not None:
        if args.results is None:
            raise SystemExit("--merge needs --results")
        for source in args.merge:
            print(source, "->", args.results, compare.merge_blocks(source, args.results))
        return
    args.streams, args.voices, args.runners = _ints(args.streams), _words(args.voices), _words(args.runners)
    args.first_chunk = _ints(args.first_chunk)
    if unknown := set(args.runners) - set(RUNNERS):
        raise SystemExit(f"unknown runners: {sorted(unknown)}")
    if args.frames and args.frames > 40 + 5 * len(TEXT):  # the engine caps a segment by its text's length
        raise SystemExit(f"--frames is at most {40 + 5 * len(TEXT)} for this text")
    if not args.design_model:
        from .qwen_models import build_models

        size = args.random or "tiny"
        device = args.device or ("cuda:0" if torch.cuda.is_available() and size != "tiny" else "cpu")
        root = args.models_dir or tempfile.mkdtemp(prefix=f"qwen-{size}-")
        started = time.perf_counter()
        args.design_model, args.base_model = map(str, build_models(root, size, device=device, dtype=args.dtype))
        print(f"built {size} models in {time.perf_counter() - started:.1f}s: {root}", flush=True)
    rows, notes = run_all(args)
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    heading = _heading(args, device)
    body = "\n\n".join([compare.table(rows), compare.phase_table(rows, PHASES), *notes])
    print(heading, body, sep="\n\n")
    if args.results is not None:
        key = f"{args.random or 'hub'}-{device.split(':')[0]}"
        compare.update_results(args.results, key, compare.block(key, heading, body))


if __name__ == "__main__":
    main()
