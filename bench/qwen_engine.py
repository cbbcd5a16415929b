"""Engine-level Qwen3-TTS benchmark: TTFA, per-step time, RTF at 1, 4 and 16 streams.

    python -m bench.qwen_engine                      # tiny random-weight models (CPU)
    python -m bench.qwen_engine --design-model Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign \\
        --base-model Qwen/Qwen3-TTS-12Hz-1.7B-Base  # real weights, GPU

Measures the engine alone (no server, no network): TTFA is ``synthesize`` to
its first chunk; a step is one scheduler round (every live stream advanced one
80 ms frame); RTF is a stream's wall time over its audio duration.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from server.engines.base import SAMPLE_RATE, Reference, SynthesisRequest, Voice
from server.engines.qwen.engine import QwenEngine
from server.engines.qwen.stream import Talker

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


def _instrument() -> list[tuple[int, float]]:
    rounds: list[tuple[int, float]] = []
    step = Talker.step

    def timed(self: Talker, states: list) -> None:
        started = time.perf_counter()
        step(self, states)
        rounds.append((len(states), time.perf_counter() - started))

    Talker.step = timed  # type: ignore[method-assign]
    return rounds


async def _one(engine: QwenEngine, voice: Voice) -> dict[str, float]:
    started = time.perf_counter()
    first: float | None = None
    samples = 0
    async for chunk in engine.synthesize(SynthesisRequest(TEXT, voice, language="english")):
        first = first if first is not None else time.perf_counter() - started
        samples += len(chunk)
    wall = time.perf_counter() - started
    return {"ttfa": first or wall, "wall": wall, "audio": samples / SAMPLE_RATE}


async def _level(engine: QwenEngine, voice: Voice, n: int, rounds: list) -> dict[str, Any]:
    rounds.clear()
    results = await asyncio.gather(*(_one(engine, voice) for _ in range(n)))
    full = [dt for width, dt in rounds if width == n] or [dt for _, dt in rounds]
    return {
        "streams": n,
        "ttfa_ms_p50": 1000 * statistics.median(r["ttfa"] for r in results),
        "ttfa_ms_max": 1000 * max(r["ttfa"] for r in results),
        "step_ms": 1000 * statistics.median(full),
        "step_ms_per_stream": 1000 * statistics.median(full) / n,
        "rtf": statistics.median(r["wall"] / r["audio"] for r in results),
        "audio_s": results[0]["audio"],
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    generation = {"max_new_tokens": args.frames + 1} if args.frames else None
    engine = QwenEngine(args.design_model, args.base_model, device=args.device, generation=generation)
    await engine.start()
    rounds = _instrument()
    ref = Reference(np.random.RandomState(0).randn(3 * SAMPLE_RATE).astype(np.float32) * 0.1, key="bench")
    rows = []
    try:
        for kind, voice in (("design", Voice(design="a calm, warm narrator")), ("clone", Voice(reference=ref))):
            await _one(engine, voice)  # warm-up: first-call allocations, prompt cache
            for n in args.streams:
                rows.append({"voice": kind, **await _level(engine, voice, n, rounds)})
    finally:
        await engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design-model")
    parser.add_argument("--base-model")
    parser.add_argument("--device")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--frames", type=int, default=None, help="cap frames per stream (tiny models: 24)")
    args = parser.parse_args()
    if not args.design_model:
        from tests.qwen_tiny import build_tiny_models

        args.design_model, args.base_model = map(str, build_tiny_models(tempfile.mkdtemp(prefix="qwen-tiny-")))
    rows = asyncio.run(run(args))
    print("| voice | streams | TTFA p50 ms | TTFA max ms | step ms (all streams) | step ms / stream | RTF p50 | audio s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['voice']} | {r['streams']} | {r['ttfa_ms_p50']:.0f} | {r['ttfa_ms_max']:.0f} | {r['step_ms']:.1f} "
            f"| {r['step_ms_per_stream']:.2f} | {r['rtf']:.3f} | {r['audio_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
