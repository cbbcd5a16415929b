"""One stream's decode state: prefill, step by step talker decoding, incremental codec decode.

Upstream's ``generate_*`` run the whole talker loop inside ``transformers``'
``generate`` and decode the waveform at the end. Here the loop is ours, so a
scheduler can advance many streams one frame at a time, stop one between any
two steps, and hand out audio every few frames.

The prompt (the prefill embeddings) is built by upstream's own code: we call
its ``generate_*`` with the talker's ``generate`` swapped for a function that
records its inputs and bails out. The prompt layout (role tokens, language and
speaker tags, in-context reference codes, trailing text) thus follows the
installed ``qwen-tts`` exactly, and so do the codes we sample from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

SAMPLES_PER_FRAME = 1920
DEFAULT_LEFT_CONTEXT = 72  # the codec decoder's attention window, in frames

_SAMPLING_KEYS = (
    "do_sample",
    "top_k",
    "top_p",
    "temperature",
    "repetition_penalty",
    "subtalker_dosample",
    "subtalker_top_k",
    "subtalker_top_p",
    "subtalker_temperature",
    "max_new_tokens",
)


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured talker inputs")
        self.kwargs = kwargs


@dataclass
class Prompt:
    """What upstream hands the talker's ``generate``, plus the codes to decode behind."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    trailing_text_hidden: torch.Tensor
    tts_pad_embed: torch.Tensor
    talker_kwargs: dict[str, Any]
    ref_code: torch.Tensor | None = None


def sampling_kwargs(tts: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Upstream's merge of hard defaults, the checkpoint's generation_config.json, overrides."""
    picked = {k: v for k, v in (overrides or {}).items() if k in _SAMPLING_KEYS}
    return tts._merge_generate_kwargs(**picked)


def capture_prompt(tts: Any, method: str, /, **kwargs: Any) -> Prompt:
    """Run ``tts.<method>(**kwargs)`` up to the talker's generate and return its inputs.

    Only the thread that owns ``tts`` may call this: it swaps an attribute on the talker.
    """
    talker = tts.model.talker

    def capture(**talker_inputs: Any) -> None:
        raise _Captured(talker_inputs)

    talker.generate = capture  # instance attribute shadows GenerationMixin.generate
    try:
        getattr(tts, method)(**kwargs)
    except _Captured as captured:
        inputs = captured.kwargs
    else:  # pragma: no cover - upstream changed shape
        raise RuntimeError(f"{method} did not reach the talker")
    finally:
        del talker.generate
    prompt_items = kwargs.get("voice_clone_prompt")
    ref_code = prompt_items[0].ref_code if isinstance(prompt_items, list) else None
    return Prompt(
        inputs_embeds=inputs.pop("inputs_embeds"),
        attention_mask=inputs.pop("attention_mask"),
        trailing_text_hidden=inputs.pop("trailing_text_hidden"),
        tts_pad_embed=inputs.pop("tts_pad_embed"),
        talker_kwargs=inputs,
        ref_code=ref_code,
    )


def _logits_processors(kw: dict[str, Any], device: torch.device) -> LogitsProcessorList:
    # Same processors, same order as transformers builds them for upstream's call.
    # The ones holding token ids keep them on the logits' device (CPU by default).
    procs = LogitsProcessorList()
    if kw.get("repetition_penalty") not in (None, 1.0):
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=kw["repetition_penalty"]))
    if kw.get("min_new_tokens"):
        procs.append(MinNewTokensLengthLogitsProcessor(0, kw["min_new_tokens"], kw["eos_token_id"], device=str(device)))
    if kw.get("suppress_tokens"):
        procs.append(SuppressTokensLogitsProcessor(kw["suppress_tokens"], device=str(device)))
    if kw.get("do_sample"):
        if kw.get("temperature") not in (None, 1.0):
            procs.append(TemperatureLogitsWarper(kw["temperature"]))
        if kw.get("top_k"):
            procs.append(TopKLogitsWarper(top_k=kw["top_k"]))
        if kw.get("top_p") is not None and kw["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(top_p=kw["top_p"]))
    return procs


@dataclass
class StreamState:
    """The talker's per-stream decode state; ``rope_deltas`` lives on the module upstream."""

    prompt: Prompt
    max_frames: int
    cache: DynamicCache = field(default_factory=DynamicCache)
    attention_mask: torch.Tensor | None = None
    rope_deltas: torch.Tensor | None = None
    past_hidden: torch.Tensor | None = None
    generation_step: int = 0
    position: int = 0
    tokens: torch.Tensor = field(default_factory=lambda: torch.empty((1, 0), dtype=torch.long))
    """First-codebook tokens sampled so far, (1, n); prefill puts it on the model's device."""
    frames: list[torch.Tensor] = field(default_factory=list)
    done: bool = False
    processors: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    slot: Any = None
    """The static cache a ``StaticTalker`` lent this stream, if any."""
    rope_delta: int = 0

    def __post_init__(self) -> None:
        self.processors = _logits_processors(self.prompt.talker_kwargs, self.prompt.inputs_embeds.device)


class Talker:
    """Runs the talker of one loaded model; ``step`` takes a list so it can batch later."""

    def __init__(self, tts: Any) -> None:
        self.tts = tts
        self.talker = tts.model.talker
        self.eos = tts.model.config.talker_config.codec_eos_token_id

    def prefill(self, state: StreamState) -> None:
        self._prefill(state, state.cache)

    @torch.inference_mode()
    def _prefill(self, state: StreamState, cache: Any) -> None:
        """Run the prompt through the talker into ``cache`` and sample the first token."""
        p = state.prompt
        length = p.inputs_embeds.shape[1]
        out = self.talker(
            inputs_embeds=p.inputs_embeds,
            attention_mask=p.attention_mask,
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.arange(length, device=p.inputs_embeds.device),
            trailing_text_hidden=p.trailing_text_hidden,
            tts_pad_embed=p.tts_pad_embed,
        )
        state.rope_deltas = self.talker.rope_deltas
        state.rope_delta = int(self.talker.rope_deltas.reshape(-1)[0])
        state.attention_mask = p.attention_mask
        state.position = length
        state.generation_step = out.generation_step
        state.past_hidden = out.past_hidden
        state.tokens = torch.empty((1, 0), dtype=torch.long, device=p.inputs_embeds.device)
        self._sample(state, out.logits)

    def release(self, state: StreamState) -> None:
        """The stream is finished or dropped; a subclass takes back what it lent."""

    def step(self, states: list[StreamState]) -> None:
        """Advance each stream by one frame. A batched version would stack these."""
        for state in states:
            if not state.done:
                self._step_one(state)

    @torch.inference_mode()
    def _step_one(self, state: StreamState) -> None:
        kw = state.prompt.talker_kwargs
        token = state.tokens[:, -1:]
        assert state.attention_mask is not None, "prefill() sets the mask"
        state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((1, 1))], dim=1)
        self.talker.rope_deltas = state.rope_deltas  # upstream keeps it per call on the module
        out = self.talker(
            input_ids=token,
            attention_mask=state.attention_mask,
            past_key_values=state.cache,
            use_cache=True,
            cache_position=torch.tensor([state.position], device=token.device),
            past_hidden=state.past_hidden,
            generation_step=state.generation_step,
            trailing_text_hidden=state.prompt.trailing_text_hidden,
            tts_pad_embed=state.prompt.tts_pad_embed,
            subtalker_dosample=kw["subtalker_dosample"],
            subtalker_top_k=kw["subtalker_top_k"],
            subtalker_top_p=kw["subtalker_top_p"],
            subtalker_temperature=kw["subtalker_temperature"],
        )
        state.position += 1
        state.generation_step = out.generation_step
        state.past_hidden = out.past_hidden
        state.frames.append(out.hidden_states[1][0])
        if len(state.frames) >= state.max_frames:
            state.done = True
            return
        self._sample(state, out.logits)

    def _sample(self, state: StreamState, logits: torch.Tensor) -> None:
        scores = state.processors(state.tokens, logits[:, -1, :].to(dtype=torch.float32))  # type: ignore[arg-type]
        if state.prompt.talker_kwargs.get("do_sample"):
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
        else:
            token = torch.argmax(scores, dim=-1, keepdim=True)
        state.tokens = torch.cat([state.tokens, token], dim=1)
        if int(token) == self.eos:
            state.done = True


class CodecStream:
    """Decodes a growing code sequence chunk by chunk.

    The 12 Hz decoder is causal: decoding frames [s-L, e) and keeping the
    samples of [s, e) reproduces a one-shot decode exactly while L covers its
    receptive field (the attention window is 72 frames; shorter context can
    click at seams). In-context clones start with the reference codes as
    history, which is how upstream decodes them too.
    """

    def __init__(self, tts: Any, history: torch.Tensor | None, left_context: int = DEFAULT_LEFT_CONTEXT) -> None:
        self.decoder = tts.model.speech_tokenizer.model.decoder
        self.left_context = left_context
        self.codes: list[torch.Tensor] = [] if history is None else list(history)
        self.emitted = len(self.codes)

    @property
    def pending(self) -> int:
        return len(self.codes) - self.emitted

    def push(self, frames: list[torch.Tensor]) -> None:
        self.codes.extend(frames)

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        end = len(self.codes)
        if end == self.emitted:
            return np.zeros(0, dtype=np.float32)
        start = max(0, self.emitted - self.left_context)
        window = torch.stack(self.codes[start:end]).clamp(min=0)  # (T, Q)
        wav = self.decoder(window.T.unsqueeze(0).to(self.decoder.device))[0, 0]
        keep = wav[(self.emitted - start) * SAMPLES_PER_FRAME :]
        self.emitted = end
        return keep.float().cpu().numpy()


@torch.inference_mode()
def warm_codec(tts: Any, longest: int) -> None:
    """Decode every window length up to ``longest`` frames once, so no stream meets a cold shape."""
    decoder = tts.model.speech_tokenizer.model.decoder
    groups = tts.model.config.talker_config.num_code_groups
    for frames in range(1, longest + 1):
        decoder(torch.zeros(1, groups, frames, dtype=torch.long, device=decoder.device))
