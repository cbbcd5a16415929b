"""One resident model and everything it serves with: its decode batch, graphs, codec and prompt builder.

The model manager makes a ``ModelRuntime`` when it loads a model (through a
``RuntimeFactory``, which carries the engine's decode settings) and drops it
when it unloads the model, so the batch's memory, the captured graphs and the
codec's state live and die with the weights they belong to. Only the model's
scheduler thread uses a runtime once it is made; on a GPU all of its work runs
on the runtime's own CUDA stream, so the two resident models' threads do not
serialise each other's kernels.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .batch import DEFAULT_MAX_LEN, DEFAULT_MAX_TEXT, DecodeBatch
from .codec_graphs import GraphedCodecBatch
from .prompt import ClonePromptCache, PromptBuilder
from .sampling import SamplingPlan
from .window_codec import DEFAULT_LEFT_CONTEXT, RoundCodec, WindowCodec


def make_codec(kind: str, decoder: Any, rows: int, left_context: int, *, graphs: bool = False) -> RoundCodec:
    """``stateful`` (``auto``): ``codec.CodecBatch``, one row per decode row carrying the decoder's state,
    every due chunk in one batched pass (with ``graphs``, a replay per padded shape: ``codec_graphs``);
    ``window``: per-stream windows re-decoding left context (the reference)."""
    if kind in ("auto", "stateful"):
        return GraphedCodecBatch(decoder, rows, graphs=graphs)
    if kind == "window":
        return WindowCodec(decoder, left_context)
    raise ValueError(f"codec must be auto, stateful or window, not {kind!r}")


logger = logging.getLogger("minestream.qwen")


@dataclass(frozen=True)
class DecodeSettings:
    """How every runtime of an engine decodes (the rows come from the memory plan, per model)."""

    generation: dict[str, Any] | None = None
    max_len: int = DEFAULT_MAX_LEN
    max_text: int = DEFAULT_MAX_TEXT
    graphs: bool = True
    noise: str = "counter"
    predictor: str = "folded"
    talker: str = "modules"
    codec: str = "auto"
    left_context: int = DEFAULT_LEFT_CONTEXT
    longest_chunk: int = 12


class ModelRuntime:
    def __init__(self, kind: str, tts: Any, batch: DecodeBatch, codec: RoundCodec, prompts: PromptBuilder, stream: Any) -> None:
        self.kind = kind
        self.tts = tts
        self.batch = batch
        self.codec = codec
        self.prompts = prompts
        self.stream = stream
        """The runtime's CUDA stream (None on a CPU)."""
        self.ready_s: float | None = None
        """How long ``start`` took (graph capture, codec warm-up)."""

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Run the enclosed device work on the runtime's stream."""
        if self.stream is None:
            yield
        else:
            with torch.cuda.stream(self.stream):
                yield

    def start(self, settings: DecodeSettings) -> None:
        """Capture the step graphs and meet every codec window shape once, before any request."""
        started = time.perf_counter()
        with self.context(), torch.inference_mode():
            self.batch.capture()
            if isinstance(self.codec, GraphedCodecBatch) and self.codec.graphs and self.batch.device.type == "cuda":
                self.codec.capture(pool=self.batch.graph_pool)
            elif self.batch.device.type == "cuda":  # every decode shape once: cuDNN builds a plan per new shape
                longest = settings.left_context + settings.longest_chunk if isinstance(self.codec, WindowCodec) else settings.longest_chunk
                getattr(self.codec, "warm", lambda _: None)(longest)
            if self.stream is not None:
                self.stream.synchronize()
        self.ready_s = time.perf_counter() - started
        logger.info("qwen %s: %d rows of %d positions ready in %.1fs", self.kind, self.batch.rows, self.batch.max_len, self.ready_s)

    def health(self) -> dict[str, Any]:
        return {
            "rows_in_use": self.batch.in_use,
            "rows_total": self.batch.rows,
            "max_len": self.batch.max_len,
            "graphs": self.batch.graph_count,
            "steps": self.batch.steps,
            "codec": type(self.codec).__name__,
            "codec_graphs": getattr(self.codec, "graph_count", 0),
            "predictor": type(self.batch.predictor).__name__,
            "talker": self.batch.talker_form,
        }


def _runtime_stream(device: torch.device) -> torch.cuda.Stream:
    """A model's own stream, from torch's high-priority pool (so never the warm-up stream of ``graphs``),
    ordered after the loading that ran on the default stream: pool streams do not wait for it by themselves."""
    stream = torch.cuda.Stream(device, priority=-1)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


class RuntimeFactory:
    """Makes a model's runtime when the manager has loaded it: the engine's settings, no engine."""

    def __init__(self, settings: DecodeSettings, clones: ClonePromptCache) -> None:
        self.settings = settings
        self.clones = clones

    def build(self, kind: str, tts: Any, rows: int) -> ModelRuntime:
        device = tts.model.talker.codec_head.weight.device
        stream = _runtime_stream(device) if device.type == "cuda" else None
        s = self.settings
        prompts = PromptBuilder(tts, s.generation, self.clones)
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            batch = DecodeBatch(
                tts, SamplingPlan.from_kwargs(prompts.sampling), rows=rows, max_len=s.max_len, max_text=s.max_text, graphs=s.graphs,
                noise=s.noise, predictor=s.predictor, talker=s.talker,
            )
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            codec = make_codec(s.codec, tts.model.speech_tokenizer.model.decoder, rows, s.left_context, graphs=s.graphs)
        runtime = ModelRuntime(kind, tts, batch, codec, prompts, stream)
        runtime.start(s)
        return runtime
