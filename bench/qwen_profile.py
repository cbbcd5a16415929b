"""Where a decode step's time goes, per batch size: code predictor, talker, the rest; prefill; codec.

    python -m bench.qwen_profile --random 1.7b --batch 1,16,64 --out OUT    # GPU: graph replays timed with CUDA events
    python -m bench.qwen_profile                                            # tiny models on CPU: eager, wall time

Builds one model's runtime (its batch, graphs and codec) and times, at each
batch size B with every row active:

* step: the whole captured step (predictor loop, talker step, sampling, state
  updates), as the scheduler runs it;
* predictor: the 15-codebook loop alone (sampling included), captured alone;
* eager predictor: the same loop through upstream's modules (``CodePredictor``,
  the reference), and the share of its codes the folded predictor matches on
  the same inputs and draws (1.0 in float32; bf16 rounds the folded weights);
* compiled predictor (``--compiled``): the folded loop under ``torch.compile``
  (``CompiledCodePredictor``), captured alone, and the share of its codes that
  match the folded predictor's; and the talker step under ``torch.compile``;
* talker: one talker step over the KV pool (and the codec head), captured alone;
* other: step - predictor - talker (the talker's sampling and the row updates);
* prompt: one request's prompt built once its voice is known (a clone's cached);
* prefill: B prompts admitted together, as admission runs them (one replay
  at a padded shape on a GPU), and the same prefill op by op (eager);
* codec: one round's decode of B 12-frame chunks as the scheduler runs it (a
  replay of a captured shape on a GPU), the same op by op (eager codec), and
  of B 2-frame chunks (every stream's first chunk).

The rows decode real prompts (the bench text) so attention reads real lengths.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from server.engines.qwen.batch import Admission
from server.engines.qwen.graphs import Replay

from .qwen_compare import INSTRUCT, TEXT


def _timer(device: torch.device) -> Callable[[Callable[[], None], int], float]:
    """Median milliseconds of ``fn`` over ``n`` runs (CUDA events on a GPU)."""

    def cpu(fn: Callable[[], None], n: int) -> float:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    def cuda(fn: Callable[[], None], n: int) -> float:
        fn()
        times = []
        for _ in range(n):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        return statistics.median(times)

    return cuda if device.type == "cuda" else cpu


@torch.inference_mode()
def profile(
    runtime: Any, sizes: list[int], repeats: int, eager: Any = None, compiled: Any = None, compiled_talker: Callable[..., Any] | None = None
) -> list[dict[str, Any]]:
    batch, codec = runtime.batch, runtime.codec
    voice = _voice(runtime.kind)
    prompt = runtime.prompts.build(voice, TEXT, "english")  # a clone's first build encodes its reference
    prompt_ms = _prompt_ms(runtime, voice)
    time_ms = _timer(batch.device)
    rows_out = []
    for size in [s for s in sizes if s <= batch.rows]:
        started = time.perf_counter()
        rows, _ = batch.admit([Admission(prompt, 100_000) for _ in range(size)])
        if batch.device.type == "cuda":
            torch.cuda.synchronize()
        prefill_ms = 1000 * (time.perf_counter() - started)
        eager_prefill_ms = _eager_prefill_ms(batch, rows, [prompt] * size)
        keys = min(b for b in batch.key_buckets if b > prompt.length + repeats + 8)  # the rows' length while timed
        step = batch._replay(size, keys)
        predictor = Replay(_predictor_call(batch, size), batch.device, graphs=batch.graphs)
        talker = Replay(_talker_call(batch, size, keys), batch.device, graphs=batch.graphs)
        figures = {"batch": size, "keys": keys, "step_ms": time_ms(step, repeats), "predictor_ms": time_ms(predictor, repeats)}
        if eager is not None:
            figures["eager_predictor_ms"] = time_ms(Replay(_predictor_call(batch, size, eager), batch.device, graphs=batch.graphs), repeats)
        if compiled is not None and not _time_compiled(figures, "compiled_predictor_ms", _predictor_call(batch, size, compiled), batch, time_ms, repeats):
            compiled = None
        figures["talker_ms"] = time_ms(talker, repeats)
        if compiled_talker is not None:
            talker_call = _talker_call(batch, size, keys, compiled_talker)
            if not _time_compiled(figures, "compiled_talker_ms", talker_call, batch, time_ms, repeats):
                compiled_talker = None
        figures["other_ms"] = figures["step_ms"] - figures["predictor_ms"] - figures["talker_ms"]
        figures["prefill_ms"], figures["eager_prefill_ms"], figures["prompt_ms"] = prefill_ms, eager_prefill_ms, prompt_ms
        figures["codec_ms"] = _codec_ms(codec, size, batch.device)
        figures["eager_codec_ms"] = _codec_ms(codec, size, batch.device, eager=True)
        figures["first_chunk_ms"] = _codec_ms(codec, size, batch.device, frames=2)  # every stream's first chunk at once
        others = {name: p for name, p in (("agreement", eager), ("compiled_agreement", compiled)) if p is not None}
        if others:  # last: it steps the rows on
            figures.update(zip(others, _agreement(batch, size, list(others.values())), strict=True))
        rows_out.append({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})
        print("profile", rows_out[-1], flush=True)
        for row in rows:
            batch.release(row)
    return rows_out


def _voice(kind: str) -> Any:
    from server.engines.base import Reference, Voice

    from .qwen_compare import reference_audio

    return Voice(design=INSTRUCT) if kind == "design" else Voice(reference=Reference(reference_audio(), key="profile"))


def _time_compiled(figures: dict[str, Any], key: str, call: Callable[[], None], batch: Any, time_ms: Any, repeats: int) -> bool:
    """``figures[key]``: a compiled part's time, captured alone; False (and why, printed) if it failed to compile or
    to capture, so that the rest of the profile still counts."""
    try:
        figures[key] = time_ms(Replay(call, batch.device, graphs=batch.graphs), repeats)
    except Exception as exc:
        print(f"profile: {key} failed at batch {figures['batch']}: {type(exc).__name__}: {exc}", flush=True)
        return False
    return True


def _prompt_ms(runtime: Any, voice: Any, repeats: int = 5) -> float:
    """A request's prompt as the engine builds it once its voice is known (a clone's prompt cached): median ms."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.prompts.build(voice, TEXT, "english")
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def _eager_prefill_ms(batch: Any, rows: list[int], prompts: list[Any]) -> float:
    """The same rows prefilled again op by op (it writes the same state the admission wrote)."""
    started = time.perf_counter()
    token = batch.prefill_eager(rows, prompts)
    token.cpu()  # as admission ends: its first tokens on the host
    return 1000 * (time.perf_counter() - started)


def _predictor_call(batch: Any, size: int, predictor: Any = None) -> Callable[[], None]:
    rows = slice(0, size)
    noise = None if batch.predictor_noise is None else batch.predictor_noise[rows]
    settings = batch.predictor_settings.rows(rows)
    predictor = predictor or batch.predictor

    def run() -> None:
        predictor(batch.last_hidden[rows], batch.last_token[rows], settings, noise)

    return run


def _agreement(batch: Any, size: int, others: list[Any], frames: int = 8) -> list[float]:
    """The share of codebook codes on which each of ``others`` agrees with the batch's predictor, over a few steps' inputs."""
    rows, same, total = slice(0, size), [0] * len(others), 0
    for _ in range(frames):
        noise = None if batch.predictor_noise is None else batch.predictor_noise[rows]
        args = (batch.last_hidden[rows], batch.last_token[rows], batch.predictor_settings.rows(rows), noise)
        ours = batch.predictor(*args)[0]
        same = [n + int((ours == other(*args)[0]).sum()) for n, other in zip(same, others, strict=True)]
        total += ours.numel()
        batch.step()  # new hidden states and tokens (and, with counter noise, new draws) for the next comparison
    return [n / total for n in same]


def _talker_call(batch: Any, size: int, keys: int, step: Callable[..., Any] | None = None) -> Callable[[], None]:
    x = batch.last_hidden[:size].clone()
    positions = batch.position[:size].clone()  # writes where the next step will write anyway
    step = step or batch.stack.step

    def run() -> None:
        batch.codec_head(step(x, positions, keys))

    return run


def _codec_ms(codec: Any, size: int, device: torch.device, frames: int = 12, *, eager: bool = False) -> float:
    """One round's decode of ``size`` chunks of ``frames``: as the scheduler calls it (a replay where the codec
    captured that shape), or, with ``eager``, op by op (``CodecBatch.decode``)."""
    from server.engines.qwen.codec import CodecBatch

    decode = functools.partial(CodecBatch.decode, codec) if eager and isinstance(codec, CodecBatch) else codec.decode
    handles = [codec.admit(None) for _ in range(size)]
    chunks = [torch.randint(0, 2048, (frames, 16)) for _ in range(size)]
    try:
        decode(handles, chunks)  # first shape: plans, allocations
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        decode(handles, chunks)  # ends with the copy to the host
        return 1000 * (time.perf_counter() - started)
    finally:
        for handle in handles:
            codec.release(handle)


def table(rows: list[dict[str, Any]], kind: str, codec: str) -> str:
    lines = [
        f"One {kind} decode step by batch size (ms; every row active; codec {codec}):",
        "",
        "| batch | keys | step | predictor (folded) | eager predictor | codes agree | compiled predictor | codes agree (compiled) "
        "| talker | compiled talker | other | prefill (B prompts) | eager prefill | codec (B x 12 frames) | eager codec | codec (B x 2 frames) | step ms / row |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        eager = f"{r['eager_predictor_ms']:.2f} | {r['agreement']:.4f}" if "agreement" in r else "- | -"
        compiled = f"{r['compiled_predictor_ms']:.2f} | {r['compiled_agreement']:.4f}" if "compiled_agreement" in r else "- | -"
        talker = f"{r['compiled_talker_ms']:.2f}" if "compiled_talker_ms" in r else "-"
        lines.append(
            f"| {r['batch']} | {r['keys']} | {r['step_ms']:.2f} | {r['predictor_ms']:.2f} | {eager} | {compiled} | {r['talker_ms']:.2f} | {talker} | {r['other_ms']:.2f} "
            f"| {r['prefill_ms']:.1f} | {r['eager_prefill_ms']:.1f} | {r['codec_ms']:.1f} | {r['eager_codec_ms']:.1f} | {r['first_chunk_ms']:.1f} "
            f"| {r['step_ms'] / r['batch']:.3f} |"
        )
    one = next((r for r in rows if r["batch"] == 1), None)
    if one is not None:
        parts = {"prompt": one["prompt_ms"], "prefill": one["prefill_ms"], "2 steps": 2 * one["step_ms"], "first chunk": one["first_chunk_ms"]}
        lines += ["", "First audio at one stream, from its parts (ms; the scheduler's first chunk is 2 frames): "
                  + " + ".join(f"{k} {v:.1f}" for k, v in parts.items()) + f" = **{sum(parts.values()):.1f}**"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m bench.qwen_profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--design-model")
    p.add_argument("--base-model")
    p.add_argument("--random", choices=["tiny", "0.6b", "1.7b"])
    p.add_argument("--models-dir")
    p.add_argument("--kind", choices=["design", "base"], default="design")
    p.add_argument("--batch", default="1,16,64")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--compiled", action="store_true", help="also time the compiled predictor and talker (torch.compile: minutes of compiling on a CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from server.engines.qwen import compat, compiling
    from server.engines.qwen.compiled_predictor import CompiledCodePredictor
    from server.engines.qwen.manager import ModelManager
    from server.engines.qwen.predictor import CodePredictor
    from server.engines.qwen.prompt import ClonePromptCache
    from server.engines.qwen.runtime import DecodeSettings, RuntimeFactory

    from .qwen_models import build_models

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if not args.design_model:
        size = args.random or "tiny"
        args.design_model, args.base_model = map(str, build_models(args.models_dir or tempfile.mkdtemp(), size, device=device))
    compat.install()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    factory = RuntimeFactory(DecodeSettings(), ClonePromptCache("profile"))
    source = args.design_model if args.kind == "design" else args.base_model
    manager = ModelManager({args.kind: source}, factory, device=device, dtype=dtype, max_rows=args.rows, max_len=2048, max_text=512)
    runtime = factory.build(args.kind, manager.loader(source), args.rows)
    with runtime.context():
        talker, plan = runtime.tts.model.talker, runtime.batch.plan
        eager = CodePredictor(talker, args.rows, top_p=plan.predictor_top_p, top_k=plan.predictor_top_k)
        compiled = CompiledCodePredictor(talker, args.rows, top_p=plan.predictor_top_p, top_k=plan.predictor_top_k) if args.compiled else None
        compiled_talker = compiling.compiled(runtime.batch.stack.step) if args.compiled else None
        rows = profile(runtime, [int(b) for b in args.batch.split(",")], args.repeats, eager, compiled, compiled_talker)
    text = table(rows, args.kind, type(runtime.codec).__name__)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
