"""The talker's decode step on static buffers, replayed as CUDA graphs on a GPU.

A frame is two model calls: the code predictor (a 5-layer transformer run 15
times, once per residual codebook) and one 28-layer talker step. Eagerly, that
is a few thousand small kernel launches and ~150 ms of Python per frame on an
H100, far slower than real time. Here both run on fixed-address tensors
(``StaticCache`` and I/O buffers), so each can be captured once as a CUDA graph
and replayed for every frame: the predictor's whole 15-step loop, sampling
included, is one replay, and a talker step is another.

``StaticTalker`` keeps ``Talker``'s interface and its first-codebook sampling
(the same logits processors, so codes match upstream's), and replaces only
the two model calls. On a CPU the very same functions run eagerly, which is
how the tests check it against upstream without a GPU.

Each live stream needs its own talker KV cache, so streams take a
``DecodeSlot`` (cache, buffers, graph) from a pool that grows to the number of
concurrent streams and is reused afterwards. One predictor loop per sampling
setting serves all streams: its cache is rebuilt every frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import StaticCache

from .stream import StreamState, Talker

logger = logging.getLogger("minestream.qwen")

DEFAULT_MAX_LEN = 2048  # prompt + frames per stream; ~235 MB of bf16 KV per slot at 1.7B
_STATIC_ATTENTION = ("sdpa", "eager")


def supports_static(tts: Any) -> bool:
    """The static path builds its own 4D masks, which flash-attention does not take."""
    return getattr(tts.model.talker.config, "_attn_implementation", "sdpa") in _STATIC_ATTENTION


def predictor_sampling(kw: dict[str, Any]) -> dict[str, Any]:
    """The code predictor's sampling settings, from upstream's merged generate kwargs."""
    return {
        "do_sample": bool(kw["subtalker_dosample"]),
        "top_k": kw["subtalker_top_k"],
        "top_p": kw["subtalker_top_p"],
        "temperature": kw["subtalker_temperature"],
    }


def _mask(allowed: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A 4D mask in the form the attention implementation wants (bool for SDPA, additive for eager)."""
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def sample(logits: torch.Tensor, *, do_sample: bool, top_k: int | None, top_p: float | None, temperature: float | None) -> torch.Tensor:
    """transformers' warpers in generate's order (temperature, top-k, top-p), without host syncs."""
    scores = logits.float()
    if not do_sample:
        return scores.argmax(dim=-1)
    if temperature not in (None, 1.0):
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1).view(-1)


def _init_cache(cache: StaticCache, config: Any, dtype: torch.dtype, device: torch.device) -> None:
    # StaticCache allocates on first update; a graph must see the final addresses.
    heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    probe = torch.zeros(1, heads, 1, head_dim, dtype=dtype, device=device)
    for layer in cache.layers:
        if not layer.is_initialized:
            layer.lazy_initialization(probe)


class _Replay:
    """``fn`` captured as a CUDA graph on a GPU; called as is elsewhere."""

    def __init__(self, fn: Callable[[], None], device: torch.device, *, graphs: bool) -> None:
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        if graphs and device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy inits and cuBLAS workspaces happen outside the graph
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the other model's scheduler thread keeps launching work meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                fn()

    def __call__(self) -> None:
        if self.graph is None:
            self.fn()
        else:
            self.graph.replay()


class CodePredictorLoop:
    """The 15 residual codebooks of one frame, and the frame's summed embedding."""

    def __init__(self, talker: Any, sampling: dict[str, Any], *, graphs: bool) -> None:
        predictor = talker.code_predictor
        config = predictor.model.config
        self.talker, self.predictor = talker, predictor
        self.groups = talker.config.num_code_groups - 1
        self.sampling = sampling
        weight = talker.codec_head.weight
        device, dtype = weight.device, weight.dtype
        positions = self.groups + 1  # 2 prefill positions, then codes 0..13 fed back
        self.cache = StaticCache(config=config, max_cache_len=positions)
        _init_cache(self.cache, config, dtype, device)
        implementation = getattr(config, "_attn_implementation", "sdpa")
        keys = torch.arange(positions, device=device)
        self.prefill_positions = torch.arange(2, device=device)
        self.prefill_mask = _mask((keys[None, :] <= self.prefill_positions[:, None])[None, None], implementation, dtype)
        self.positions = [torch.tensor([p], device=device) for p in range(2, positions)]
        self.masks = [_mask((keys <= p).view(1, 1, 1, -1), implementation, dtype) for p in range(2, positions)]
        self.layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        # I/O buffers: the graph reads and writes these addresses only.
        self.past_hidden = torch.zeros(1, 1, talker.config.hidden_size, dtype=dtype, device=device)
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.codes = torch.zeros(self.groups, dtype=torch.long, device=device)
        self.embeds = torch.zeros(1, 1, talker.config.hidden_size, dtype=dtype, device=device)
        self._run = _Replay(self._loop, device, graphs=graphs)

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.predictor.model(
            inputs_embeds=self.predictor.small_to_mtp_projection(embeds),
            attention_mask={kind: mask for kind in self.layer_types},
            past_key_values=self.cache,
            cache_position=positions,
            use_cache=True,
        )
        return out.last_hidden_state[:, -1:]

    def _loop(self) -> None:
        first = self.talker.get_input_embeddings()(self.token)
        hidden = self._forward(torch.cat((self.past_hidden, first), dim=1), self.prefill_mask, self.prefill_positions)
        parts = [first]
        embeddings = self.predictor.model.get_input_embeddings()
        for i in range(self.groups):
            code = sample(self.predictor.lm_head[i](hidden)[:, -1], **self.sampling)
            self.codes[i : i + 1].copy_(code)
            parts.append(embeddings[i](code.view(1, 1)))
            if i + 1 < self.groups:
                hidden = self._forward(parts[-1], self.masks[i], self.positions[i])
        self.embeds.copy_(torch.cat(parts, dim=1).sum(1, keepdim=True))  # one reduction, as upstream sums

    def __call__(self, past_hidden: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes 1..15 of the frame whose first code is ``token``, and the talker's next input."""
        self.past_hidden.copy_(past_hidden)
        self.token.copy_(token)
        self._run()
        return self.codes, self.embeds


class DecodeSlot:
    """One stream's talker KV cache and the captured single-token step over it."""

    def __init__(self, talker: Any, max_len: int, *, graphs: bool) -> None:
        config = talker.config
        weight = talker.codec_head.weight
        device, dtype = weight.device, weight.dtype
        self.talker = talker
        self.max_len = max_len
        self.cache = StaticCache(config=config, max_cache_len=max_len)
        _init_cache(self.cache, config, dtype, device)
        self.implementation = getattr(config, "_attn_implementation", "sdpa")
        self.keys = torch.arange(max_len, device=device)
        self.embeds = torch.zeros(1, 1, config.hidden_size, dtype=dtype, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.rope_position = torch.zeros(3, 1, 1, dtype=torch.long, device=device)
        self.hidden = torch.zeros(1, 1, config.hidden_size, dtype=dtype, device=device)
        self.logits = torch.zeros(1, 1, config.vocab_size, dtype=dtype, device=device)
        self._run = _Replay(self._step, device, graphs=graphs)

    def _step(self) -> None:
        allowed = (self.keys <= self.position).view(1, 1, 1, -1)
        out = self.talker.model(
            inputs_embeds=self.embeds,
            attention_mask=_mask(allowed, self.implementation, self.embeds.dtype),
            position_ids=self.rope_position,
            past_key_values=self.cache,
            cache_position=self.position,
            use_cache=True,
        )
        self.hidden.copy_(out.last_hidden_state)
        self.logits.copy_(self.talker.codec_head(self.hidden))

    def __call__(self, embeds: torch.Tensor, position: int, rope_position: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.embeds.copy_(embeds)
        self.position.fill_(position)
        self.rope_position.fill_(rope_position)
        self._run()
        return self.hidden, self.logits


class StaticTalker(Talker):
    """``Talker`` with static caches, and CUDA graphs when ``graphs`` and on a GPU.

    A stream whose prompt would not fit ``max_len``, or that finds no memory
    for one more slot, is decoded by the plain ``Talker`` path instead.
    """

    def __init__(self, tts: Any, *, graphs: bool = True, max_len: int = DEFAULT_MAX_LEN) -> None:
        super().__init__(tts)
        self.graphs = graphs
        self.max_len = max_len
        self.slots: list[DecodeSlot] = []  # every slot made; the idle ones are in _idle
        self._idle: list[DecodeSlot] = []
        self._loops: dict[tuple[Any, ...], CodePredictorLoop] = {}

    @torch.inference_mode()
    def warm(self, sampling: dict[str, Any]) -> None:
        """Capture the graphs a first stream needs now, not during its first request."""
        self._loop(sampling)
        self._idle.append(self._slot())

    def _slot(self) -> DecodeSlot:
        if self._idle:
            return self._idle.pop()
        slot = DecodeSlot(self.talker, self.max_len, graphs=self.graphs)
        self.slots.append(slot)
        logger.info("qwen: talker slot %d ready (%d positions)", len(self.slots), self.max_len)
        return slot

    def _loop(self, sampling: dict[str, Any]) -> CodePredictorLoop:
        key = tuple(sorted(sampling.items()))
        if key not in self._loops:
            self._loops[key] = CodePredictorLoop(self.talker, sampling, graphs=self.graphs)
        return self._loops[key]

    def usage(self) -> dict[str, int]:
        """Slots made (each holds a KV cache of ``max_len`` positions) and how many are lent now."""
        return {"made": len(self.slots), "in_use": len(self.slots) - len(self._idle), "positions": self.max_len}

    def release(self, state: StreamState) -> None:
        if state.slot is not None:
            self._idle.append(state.slot)
            state.slot = None

    def prefill(self, state: StreamState) -> None:
        room = self.max_len - state.prompt.inputs_embeds.shape[1] - 1
        if room < 1:
            super().prefill(state)
            return
        try:
            slot = self._slot()
        except (torch.OutOfMemoryError, RuntimeError):  # no room for one more cache: this stream goes plain
            logger.exception("qwen: no static slot (%d made); decoding this stream step by step", len(self.slots))
            super().prefill(state)
            return
        state.max_frames = min(state.max_frames, room)
        state.slot = slot
        self._prefill(state, slot.cache)

    @torch.inference_mode()
    def _step_one(self, state: StreamState) -> None:
        slot = state.slot
        if slot is None:
            super()._step_one(state)
            return
        token = state.tokens[:, -1:]
        assert state.past_hidden is not None, "prefill() sets it"
        codes, embeds = self._loop(predictor_sampling(state.prompt.talker_kwargs))(state.past_hidden, token)
        state.frames.append(torch.cat((token.view(1), codes)))
        text = state.prompt.trailing_text_hidden
        step = state.generation_step
        embeds = embeds + (text[:, step].unsqueeze(1) if step < text.shape[1] else state.prompt.tts_pad_embed)
        hidden, logits = slot(embeds, state.position, state.position + state.rope_delta)
        state.position += 1
        state.generation_step += 1
        state.past_hidden = hidden
        if len(state.frames) >= state.max_frames:
            state.done = True
            return
        self._sample(state, logits)
