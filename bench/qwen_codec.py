"""Codec micro-benchmark: the stateful streaming decoder against today's windowed re-decode.

    python -m bench.qwen_codec                                   # tiny and full-size codec, CPU
    python -m bench.qwen_codec --sizes tiny --batches 1,16 --chunks 2,4,12 --json out.json

Per chunk of n frames, three ways of making its audio (n x 1920 samples per stream):

- **stateful**: ``CodecBatch.decode_padded`` advances every stream's row by n frames
  in one call (``server/engines/qwen/codec.py``), rows already 80 frames into their stream;
- **windowed, one at a time** (today's ``CodecStream``): each stream re-decodes 72
  frames of left context plus its n frames, one ``decoder(...)`` call per stream;
- **windowed, batched**: the same windows of all streams stacked into one call.

Every figure is the fastest of ``--repeats`` calls after a warm-up, the three ways
taken in turns (a shared machine's load then hits them alike); the ratios compare
calls measured in the same run, since CPU speed differs 2-3x between machines. The codec is built alone (``random_decoder``): the 12 Hz decoder of
``bench.qwen_models`` at that size, initialised as the model builder does. It
also reports how far a windowed chunk drifts from the one-shot decode at steady state.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from server.engines.qwen import compat
from server.engines.qwen.codec import CodecBatch

from .qwen_models import SIZES

LEFT_CONTEXT = 72  # today's CodecStream window, in frames
WARM_FRAMES = 80  # how far into its stream each row is when timing starts
DRIFT_FRAMES = 100  # the drift check's stream: longer than a window of context plus its last chunk


def random_decoder(size: str = "tiny", seed: int = 99) -> Any:
    """The codec's decoder alone at ``size``'s dimensions, random weights as ``bench.qwen_models`` makes them."""
    compat.install()
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2DecoderConfig
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    config = Qwen3TTSTokenizerV2DecoderConfig(**SIZES[size].codec_decoder)
    config._attn_implementation = "sdpa"  # what from_pretrained picks for the loaded codec
    torch.manual_seed(seed)
    decoder = Qwen3TTSTokenizerV2Decoder(config).eval()
    with torch.no_grad():
        for name, tensor in decoder.named_parameters():
            if name.endswith("embedding_sum"):
                tensor.copy_(torch.randn_like(tensor))
        for module in decoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)):
                module.reset_parameters()
    return decoder


def full_scale_residuals(decoder: Any) -> Any:
    """A copy of ``decoder`` with its residual branches at scale 1.

    Upstream initialises the transformer's layer scales to 0.01 and the ConvNeXt
    blocks' gamma to 1e-6, so with random weights those layers barely reach the
    output: a wrong state there, or a context cut short, would hide under any
    tolerance. Trained weights learn their own scales.
    """
    loud = copy.deepcopy(decoder)
    with torch.no_grad():
        for layer in loud.pre_transformer.layers:
            layer.self_attn_layer_scale.scale.fill_(1.0)
            layer.mlp_layer_scale.scale.fill_(1.0)
        for _, convnext in loud.upsample:
            convnext.gamma.fill_(1.0)
    return loud


def _best_seconds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` calls of each, taken in turns so every way sees the same machine load."""
    for run in runs.values():
        run()  # warm-up: first calls of a shape allocate and pick kernels
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def measure(decoder: Any, batch: int, chunk: int, repeats: int) -> dict[str, float]:
    """Seconds per chunk for each way, and the windowed ways' cost over the stateful one."""
    groups = int(decoder.config.num_quantizers)
    codec = CodecBatch(decoder, rows=batch)
    warm = torch.randint(0, 2048, (WARM_FRAMES, groups))
    rows = torch.tensor([codec.admit(warm) for _ in range(batch)])
    new = torch.randint(0, 2048, (batch, chunk, groups))
    windows = torch.randint(0, 2048, (batch, groups, LEFT_CONTEXT + chunk))
    runs: dict[str, Callable[[], Any]] = {
        "stateful_s": lambda: codec.decode_padded(rows, new),
        "windowed_batched_s": lambda: decoder(windows),
    }
    if batch > 1:
        runs["windowed_s"] = lambda: [decoder(windows[i : i + 1]) for i in range(batch)]
    with torch.inference_mode():
        result = _best_seconds(runs, repeats)
    result.setdefault("windowed_s", result["windowed_batched_s"])  # one stream: the same call
    result["ratio"] = result["windowed_s"] / result["stateful_s"]
    result["ratio_batched"] = result["windowed_batched_s"] / result["stateful_s"]
    return result


@torch.inference_mode()
def drift(decoder: Any, frames: int = DRIFT_FRAMES, chunk: int = 12) -> dict[str, float]:
    """Max |error| against the one-shot decode of the last chunk of a ``frames``-long stream: windowed and stateful."""
    groups = int(decoder.config.num_quantizers)
    codes = torch.randint(0, 2048, (1, frames, groups))
    spf = int(decoder.total_upsample)
    start = frames - chunk
    truth = decoder(codes.transpose(1, 2))[0, 0, start * spf :]
    windowed = decoder(codes[:, start - LEFT_CONTEXT :].transpose(1, 2))[0, 0, LEFT_CONTEXT * spf :]
    codec = CodecBatch(decoder, rows=1)
    row = codec.admit(codes[0, :start])
    stateful = codec.decode_padded(torch.tensor([row]), codes[:, start:])[0]
    return {
        "windowed_err": float((windowed - truth).abs().max()),
        "stateful_err": float((stateful - truth).abs().max()),
        "peak": float(truth.abs().max()),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| codec | streams | chunk (frames) | stateful ms/chunk | windowed ms/chunk (one at a time) | windowed batched ms | ratio (today / stateful) | ratio (batched windows / stateful) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['chunk']} | {1e3 * r['stateful_s']:.1f} | {1e3 * r['windowed_s']:.1f} | "
            f"{1e3 * r['windowed_batched_s']:.1f} | {r['ratio']:.1f}x | {r['ratio_batched']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,1.7b", help="codec sizes from bench.qwen_models (0.6b and 1.7b share one codec)")
    parser.add_argument("--chunks", default="2,4,12")
    parser.add_argument("--batches", default="1,16", help="streams per call for the tiny codec")
    parser.add_argument(
        "--full-batches", default="1", help="streams per call for a full-size codec (a window costs 10-20 s on one CPU thread)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--full-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    results: list[dict[str, Any]] = []
    drifts: dict[str, dict[str, float]] = {}
    for size in args.sizes.split(","):
        decoder = random_decoder(size)
        full = size != "tiny"
        batches = [int(b) for b in (args.full_batches if full else args.batches).split(",")]
        for batch in batches:
            for chunk in chunks:
                figures = measure(decoder, batch, chunk, args.full_repeats if full else args.repeats)
                results.append({"size": size, "batch": batch, "chunk": chunk, **figures})
                print(f"{size} x{batch} chunk {chunk}: {figures}", flush=True)
        for variant, codec in ((size, decoder), (f"{size}, residuals at scale 1", full_scale_residuals(decoder))):
            drifts[variant] = drift(codec)
            print(f"{variant} drift at steady state: {drifts[variant]}", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(_table(results))
    for size, d in drifts.items():
        print(
            f"\n{size}: last 12-frame chunk of a {DRIFT_FRAMES}-frame stream vs one-shot decode: windowed (72 frames of context) "
            f"max |err| {d['windowed_err']:.2e}, stateful {d['stateful_err']:.2e} (peak {d['peak']:.3f})"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results, "drift": drifts}, out, indent=2)


if __name__ == "__main__":
    main()
