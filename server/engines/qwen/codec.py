"""Stateful streaming decode of the 12 Hz codec, batched over streams.

The codec's decoder (``Qwen3TTSTokenizerV2Decoder``) turns frames of 16 codes
into 1920 samples each. Every layer of it is causal, with no look-ahead:

- the quantizer (16 codebook lookups and 1x1 projections) is per frame;
- ``pre_conv`` is a causal convolution (kernel 3): it carries 2 input frames;
- ``pre_transformer`` is a stack of sliding-window attention layers (window
  W = 72: a query at position t sees keys t-71..t) with rotary positions that
  count from the first frame of the sequence; it carries each layer's keys
  (after rotation) and values for the last W-1 positions, and the position;
- the two ``upsample`` stages (x2 each) are transposed convolutions whose
  kernel equals their stride (nothing overlaps: no state) followed by a
  ConvNeXt block whose depthwise causal convolution (kernel 7) carries 6 inputs;
- the vocoder: a causal convolution (kernel 7, 6 inputs), four blocks
  (x8, x5, x4, x3) of SnakeBeta, a transposed convolution with kernel 2x its
  stride r (upstream trims its last r outputs, so output block j depends on
  inputs j-1 and j: it carries 1 input), three residual units with dilated
  causal convolutions (kernel 7, dilation 1/3/9: 6, 18, 54 inputs; the 1x1
  ones carry nothing), then SnakeBeta, a causal convolution (kernel 7) and a
  clamp to [-1, 1].

Every causal convolution here has stride 1 (so upstream's right "extra
padding" is always 0). Nothing needs right context: the first n samples of a
one-shot decode never change when more frames follow, so a chunk's audio is
final as soon as its frames are decoded and no output is held back. The
minimal latency is one frame (80 ms of audio, 1920 samples).

Decoding a chunk therefore only needs each layer's left state: every stateful
layer prepends its carried inputs to the new ones, runs upstream's own
convolution weights without padding, and keeps the tail of what it saw as the
next state (the attention layers do the same with their key/value window).
Zero state is exactly upstream's zero padding at the start of a sequence, so
the stream equals ``decoder(codes)`` on the whole sequence. (Upstream's
``speech_tokenizer.decode`` decodes in chunks of 300 frames with 25 frames of
left context, so it equals the one-shot decode only up to 300 frames.)

State lives in preallocated per-row tensors, one row per stream, plus a
scratch row a caller may use to pad a batch to a fixed size. ``decode_padded``
advances any set of rows by one chunk in one forward pass, with per-row chunk
lengths (rows are right-padded: everything is causal, so padding never reaches
a valid sample; each row's state is cut at its own length). It has no host
syncs and static shapes for a given (batch, frames), so it can be captured in
a CUDA graph. One thread owns a ``CodecBatch``, like the model it decodes for.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class _Call:
    """What every layer of one decode call needs besides its input."""

    rows: torch.Tensor  # (B,) long, on the decoder's device
    frames: torch.Tensor | None  # (B,) valid frames per row; None: all rows full
    scale: int = 1  # samples per frame at the current layer

    def valid(self) -> torch.Tensor | None:
        return None if self.frames is None else self.frames * self.scale

    def upsampled(self, factor: int) -> _Call:
        return _Call(self.rows, self.frames, self.scale * factor)


@dataclass(frozen=True)
class Primed:
    """One row's state after some codes (``CodecBatch.prime``): conv states, keys, values, position."""

    states: tuple[torch.Tensor, ...]


def _window(x: torch.Tensor, dim: int, start: torch.Tensor | None, size: int) -> torch.Tensor:
    """``x[start_b : start_b + size]`` along ``dim`` for each row b; the last ``size`` when start is None."""
    if start is None:
        return x.narrow(dim, x.shape[dim] - size, size)
    shape = [1] * x.dim()
    shape[0], shape[dim] = x.shape[0], size
    index = (start[:, None] + torch.arange(size, device=x.device)).view(shape)
    return torch.gather(x, dim, index.expand(*x.shape[:dim], size, *x.shape[dim + 1 :]))


class CodecBatch:
    """Per-row streaming state of one codec decoder and the batched step over it.

    ``admit`` gives a stream a row (lowest free first; a released row is reused),
    ``decode`` advances some rows by a chunk each, ``release`` frees a row.
    """

    def __init__(self, decoder: Any, rows: int) -> None:
        if rows < 1:
            raise ValueError("a codec batch needs at least one row")
        self.decoder = decoder
        self.rows = rows
        self.scratch_row = rows
        """A row no stream owns, to pad a batch with (it may repeat; its state and output are junk)."""
        self._upstream = sys.modules[type(decoder).__module__]
        self.device: torch.device = decoder.device
        self.dtype: torch.dtype = next(decoder.parameters()).dtype
        self.samples_per_frame = int(decoder.total_upsample)
        self.groups = int(decoder.config.num_quantizers)
        self._free = list(range(rows))
        self._dispatch = {
            self._upstream.Qwen3TTSTokenizerV2CausalConvNet: self._conv,
            self._upstream.Qwen3TTSTokenizerV2CausalTransConvNet: self._trans_conv,
            self._upstream.Qwen3TTSTokenizerV2ConvNeXtBlock: self._convnext,
            self._upstream.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit: self._residual_unit,
            self._upstream.Qwen3TTSTokenizerV2DecoderDecoderBlock: self._sequence,
            torch.nn.ModuleList: self._sequence,
            self._upstream.SnakeBeta: self._pointwise,
        }
        self._allocate()

    # -- state ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def _allocate(self) -> None:
        total = self.rows + 1

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, device=self.device, dtype=self.dtype)

        self._carried: dict[int, int] = {}  # id(module) -> inputs it carries
        self._state: dict[int, torch.Tensor] = {}
        for module in self.decoder.modules():
            carried = self._carried_inputs(module)
            if carried:
                self._carried[id(module)] = carried
                self._state[id(module)] = zeros(total, module.conv.in_channels, carried)
        transformer = self.decoder.pre_transformer
        cfg = transformer.config
        self.window = int(cfg.sliding_window)
        if not all(kind == "sliding_attention" for kind in cfg.layer_types):
            raise TypeError("the codec transformer has a layer that is not sliding-window attention")
        attn = transformer.layers[0].self_attn
        kv_shape = (total, cfg.num_key_value_heads, self.window - 1, attn.head_dim)
        self._keys = [zeros(*kv_shape) for _ in transformer.layers]
        self._values = [zeros(*kv_shape) for _ in transformer.layers]
        self._position = torch.zeros(total, dtype=torch.long, device=self.device)

    def _carried_inputs(self, module: Any) -> int:
        """How many past inputs a causal layer needs besides the new ones (0: stateless)."""
        if isinstance(module, self._upstream.Qwen3TTSTokenizerV2CausalConvNet):
            if module.stride != 1:
                raise TypeError("a strided causal convolution in the codec would need right padding")
            return int(module.padding)
        if isinstance(module, self._upstream.Qwen3TTSTokenizerV2CausalTransConvNet):
            kernel, stride = module.conv.kernel_size[0], module.conv.stride[0]
            if module.left_pad != 0 or module.right_pad != kernel - stride:
                raise TypeError("a transposed convolution in the codec is not trimmed causally")
            return math.ceil(kernel / stride) - 1
        return 0

    def _row_states(self) -> list[torch.Tensor]:
        return [*self._state.values(), *self._keys, *self._values, self._position]

    @torch.inference_mode()
    def _reset(self, row: int) -> None:
        for state in self._row_states():
            state[row].zero_()

    @torch.inference_mode()
    def prime(self, history: torch.Tensor) -> Primed:
        """The state a row has after ``history`` (T, Q) codes: ``admit`` copies it instead of decoding.

        Every utterance in one cloned voice starts from the same reference codes, so
        a voice's primed state can be kept with its clone prompt (about 5 MB at the
        real codec's size in float32) instead of decoding the reference per stream.
        Any ``CodecBatch`` over the same decoder can admit it.
        """
        self._reset(self.scratch_row)
        self.decode_padded(torch.tensor([self.scratch_row], device=self.device), history[None].to(self.device))
        primed = Primed(tuple(state[self.scratch_row].clone() for state in self._row_states()))
        self._reset(self.scratch_row)
        return primed

    @torch.inference_mode()
    def admit(self, history: torch.Tensor | Primed | None = None, row: int | None = None) -> int:
        """Take a free row for a new stream (``row``: that one, e.g. the stream's decode-batch row).

        ``history``, an in-context clone's reference as (T, Q) codes or as ``prime``
        made them, goes into the row's state; its audio is not emitted.
        """
        if not self._free:
            raise RuntimeError("no free codec row")
        if row is None:
            row = self._free[0]
        elif row not in self._free:
            raise ValueError(f"codec row {row} is not free")
        self._free.remove(row)
        if isinstance(history, Primed):
            for state, primed in zip(self._row_states(), history.states, strict=True):
                state[row].copy_(primed)
            return row
        self._reset(row)
        if history is not None and len(history):
            self.decode_padded(torch.tensor([row], device=self.device), history[None].to(self.device))
        return row

    def release(self, row: int) -> None:
        if not 0 <= row < self.rows or row in self._free:
            raise ValueError(f"codec row {row} is not in use")
        self._free.append(row)
        self._free.sort()

    @property
    def free_rows(self) -> int:
        return len(self._free)

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, rows: Sequence[int], chunks: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Advance each row by its chunk of (n_i, Q) codes in one forward; returns each chunk's audio.

        The scheduler's per-round call: chunks of different lengths are right-padded
        to the longest, and the audio comes back with one device-to-host copy.
        """
        if len(rows) != len(chunks):
            raise ValueError("one chunk per row")
        lengths = [len(chunk) for chunk in chunks]
        if not rows or max(lengths) == 0:
            return [np.zeros(0, dtype=np.float32) for _ in rows]
        codes = torch.nn.utils.rnn.pad_sequence(list(chunks), batch_first=True).to(self.device, non_blocking=True)
        frames = None if min(lengths) == max(lengths) else torch.tensor(lengths, device=self.device)
        wav = self.decode_padded(torch.tensor(list(rows), device=self.device), codes, frames)
        audio = wav.float().cpu().numpy()
        return [audio[i, : n * self.samples_per_frame] for i, n in enumerate(lengths)]

    @torch.inference_mode()
    def decode_padded(self, rows: torch.Tensor, codes: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Advance ``rows`` (B,), distinct but for ``scratch_row``, by ``codes`` (B, T, Q); returns (B, T * 1920) samples on the device.

        ``frames`` (B,) gives each row's valid frames (the rest is padding, and so is
        the audio past ``frames_b * 1920``); None means all T. No host syncs; to capture
        it in a CUDA graph, pass ``frames`` always (one code path) and pad ``rows`` to
        the graph's batch size with ``scratch_row``.
        """
        call = _Call(rows, frames)
        hidden = self.decoder.quantizer.decode(codes.clamp(min=0).transpose(1, 2))
        hidden, _ = self._conv(self.decoder.pre_conv, hidden, call)
        hidden = self._transformer(hidden.transpose(1, 2), call).transpose(1, 2)
        for stage in self.decoder.upsample:
            hidden, call = self._run(stage, hidden, call)
        wav = hidden
        for layer in self.decoder.decoder:
            wav, call = self._run(layer, wav, call)
        return wav.clamp(min=-1, max=1)[:, 0]

    @torch.inference_mode()
    def warm(self, longest: int) -> None:
        """Decode every chunk length up to ``longest`` once on the scratch row, so no stream meets a cold shape."""
        rows = torch.tensor([self.scratch_row], device=self.device)
        for frames in range(1, longest + 1):
            self.decode_padded(rows, torch.zeros(1, frames, self.groups, dtype=torch.long, device=self.device))
        self._reset(self.scratch_row)

    # -- layers --------------------------------------------------------------------------------

    def _run(self, module: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        step = self._dispatch.get(type(module))
        if step is None:
            raise TypeError(f"the streaming codec does not know {type(module).__name__}")
        return step(module, x, call)

    def _sequence(self, modules: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        for module in modules.block if hasattr(modules, "block") else modules:
            x, call = self._run(module, x, call)
        return x, call

    def _pointwise(self, module: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        return module(x), call

    def _carry(self, module: Any, x: torch.Tensor, call: _Call) -> torch.Tensor:
        """The module's carried inputs, then ``x``; the tail at each row's valid end becomes the new state."""
        carried = self._carried.get(id(module), 0)
        if not carried:
            return x
        state = self._state[id(module)]
        seen = torch.cat([state.index_select(0, call.rows), x], dim=-1)
        state.index_copy_(0, call.rows, _window(seen, 2, call.valid(), carried))
        return seen

    def _conv(self, module: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        return module.conv(self._carry(module, x, call)), call

    def _trans_conv(self, module: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        # With m carried inputs the output starts m strides early; upstream trims the
        # tail that the next inputs still add to. What is left: stride samples per input.
        carried = self._carried.get(id(module), 0)
        stride = module.conv.stride[0]
        y = module.conv(self._carry(module, x, call))
        kept = y[..., carried * stride : (carried + x.shape[-1]) * stride].contiguous()
        return kept, call.upsampled(stride)

    def _convnext(self, block: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        y, _ = self._conv(block.dwconv, x, call)
        y = block.pwconv2(block.act(block.pwconv1(block.norm(y.permute(0, 2, 1)))))
        return x + (block.gamma * y).permute(0, 2, 1), call

    def _residual_unit(self, unit: Any, x: torch.Tensor, call: _Call) -> tuple[torch.Tensor, _Call]:
        y, _ = self._conv(unit.conv1, unit.act1(x), call)
        y, _ = self._conv(unit.conv2, unit.act2(y), call)
        return y + x, call

    # -- transformer ---------------------------------------------------------------------------

    def _transformer(self, x: torch.Tensor, call: _Call) -> torch.Tensor:
        model = self.decoder.pre_transformer
        hidden = model.input_proj(x)
        length = x.shape[1]
        start = self._position.index_select(0, call.rows)
        positions = start[:, None] + torch.arange(length, device=x.device)  # counted from the stream's first frame
        cos, sin = model.rotary_emb(hidden, positions)
        mask = self._attention_mask(start, positions)
        for index, layer in enumerate(model.layers):
            attended = self._attention(index, layer.self_attn, layer.input_layernorm(hidden), (cos, sin), mask, call)
            hidden = hidden + layer.self_attn_layer_scale(attended)
            hidden = hidden + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(hidden)))
        advanced = start + (length if call.frames is None else call.frames)
        self._position.index_copy_(0, call.rows, advanced)
        return model.output_proj(model.norm(hidden))

    def _attention_mask(self, start: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, W-1+T): upstream's sliding window (key > query - W, key <= query) over cache + chunk."""
        keys = start[:, None] + torch.arange(1 - self.window, positions.shape[1], device=start.device)
        key, query = keys[:, None, :], positions[:, :, None]
        allowed = (key <= query) & (key > query - self.window) & (key >= 0)  # key < 0: before the stream began
        return allowed[:, None]

    def _attention(
        self,
        index: int,
        attn: Any,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        call: _Call,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        heads = (batch, length, -1, attn.head_dim)
        query = attn.q_norm(attn.q_proj(x).view(heads)).transpose(1, 2)
        key = attn.k_norm(attn.k_proj(x).view(heads)).transpose(1, 2)
        value = attn.v_proj(x).view(heads).transpose(1, 2)
        query, key = self._upstream.apply_rotary_pos_emb(query, key, *rotary)
        keys = torch.cat([self._keys[index].index_select(0, call.rows), key], dim=2)
        values = torch.cat([self._values[index].index_select(0, call.rows), value], dim=2)
        valid = call.frames  # the cache keeps the W-1 positions before each row's next frame
        self._keys[index].index_copy_(0, call.rows, _window(keys, 2, valid, self.window - 1))
        self._values[index].index_copy_(0, call.rows, _window(values, 2, valid, self.window - 1))
        groups = attn.num_key_value_groups
        keys, values = self._upstream.repeat_kv(keys, groups), self._upstream.repeat_kv(values, groups)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=attn.scaling)
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class StatefulCodecStream:
    """One stream over its own one-row ``CodecBatch``: a drop-in for ``stream.CodecStream``.

    Same constructor and ``push`` / ``flush`` / ``pending``; ``left_context`` is
    accepted and ignored (the carried state replaces re-decoded context).
    """

    def __init__(self, tts: Any, history: torch.Tensor | Primed | None, left_context: int | None = None) -> None:
        self.batch = CodecBatch(tts.model.speech_tokenizer.model.decoder, rows=1)
        if history is not None and not isinstance(history, Primed):
            history = torch.stack(list(history))  # CodecStream took a (T, Q) tensor or a list of frames
        self.row = self.batch.admit(history)
        self._pending: list[torch.Tensor] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push(self, frames: list[torch.Tensor]) -> None:
        self._pending.extend(frames)

    def flush(self) -> np.ndarray:
        if not self._pending:
            return np.zeros(0, dtype=np.float32)
        chunk, self._pending = torch.stack(self._pending), []
        return self.batch.decode([self.row], [chunk])[0]
