"""The forward passes of the talker and the code predictor over our own caches.

Both are stacks of Qwen3 decoder layers (pre-norm attention with per-head
RMSNorm on queries and keys, rotary positions, a gated MLP). Upstream runs
them through ``transformers`` with one cache whose write position is shared by
the whole batch; a decode batch whose rows are at different positions needs
one position per row. So the stacks here call upstream's own submodules (the
same weights, norms and projections, in the same order) and do the two things
that differ themselves: rotary positions and attention over the caches.

* ``TalkerStack`` keeps the talker's keys and values in a pool
  ``[rows, kv_heads, max_len, head_dim]`` per layer. ``prefill`` runs prompts
  (any rows, right-padded, causal, exactly upstream's SDPA call) and writes
  their keys into the pool; ``step`` advances rows ``0..B-1`` by one token each,
  every row writing at its own position and attending to its own prefix,
  over the first ``keys`` positions of the pool.
* ``PredictorStack`` runs the code predictor's 16-position sequence of one
  frame for a whole batch: all rows are at the same position there (the
  sequence restarts every frame), so its cache is a per-frame scratch.

The talker's RMSNorms are spelled as one ``F.rms_norm`` and a multiply
(``fused_norm``: the same float32 normalisation and the same cast as
upstream's module, in two ops instead of six; a 28-layer step dispatches ~450
fewer). ``PredictorStack`` calls upstream's modules unchanged: it is the
reference the folded predictor (``folded_predictor.py``) is held to.

Rotary tables are computed once by upstream's rotary modules for every
position: the per-element values are the ones upstream computes per call. The
talker's rotary embedding is "multimodal" (three position axes), but speech
has only text positions: the three axes are always equal, and then the
interleaved selection of upstream's ``apply_multimodal_rotary_pos_emb`` returns
the first axis's table unchanged, which is what the talker stack uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer index, queries, keys, values) -> attention output (B, heads, T, head_dim)."""
Norm = Callable[[Any, torch.Tensor], torch.Tensor]
"""(upstream's RMSNorm module, input) -> its output."""


def upstream_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return norm(x)  # type: ignore[no-any-return]


def normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """An RMSNorm without its weight, in upstream's precision (float32, back in the input's dtype): one
    ``F.rms_norm`` (one fused kernel on CUDA), where upstream's spelling is five ops."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def fused_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Upstream's RMSNorm module (its weight times the normalised input) in two ops instead of six."""
    return norm.weight * normalise(x, norm.variance_epsilon)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def decoder_layer(
    layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: int, attend: Attend, norm: Norm = upstream_norm
) -> torch.Tensor:
    """One upstream decoder layer (talker or predictor) on ``x`` (B, T, H); ``cos``/``sin`` broadcast to (B, 1, T, D)."""
    attn = layer.self_attn
    residual = x
    h = norm(layer.input_layernorm, x)
    shape = (*h.shape[:-1], -1, attn.head_dim)
    q = norm(attn.q_norm, attn.q_proj(h).view(shape)).transpose(1, 2)
    k = norm(attn.k_norm, attn.k_proj(h).view(shape)).transpose(1, 2)
    v = attn.v_proj(h).view(shape).transpose(1, 2)
    q = (q * cos) + (_rotate_half(q) * sin)
    k = (k * cos) + (_rotate_half(k) * sin)
    out = attend(index, q, k, v).transpose(1, 2).reshape(*h.shape[:-1], -1)
    x = residual + attn.o_proj(out)
    return x + layer.mlp(norm(layer.post_attention_layernorm, x))


def kv_shape(config: Any) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


class TalkerStack:
    """The talker's layers over a per-row KV pool."""

    def __init__(self, talker: Any, rows: int, max_len: int, norm: Norm = fused_norm) -> None:
        model = talker.model
        weight = talker.codec_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.layers = list(model.layers)
        self.norm = model.norm
        self.spell_norm = norm
        """How the RMSNorms run: ``fused_norm`` (the server's), or ``upstream_norm`` (the modules as they are)."""
        self.heads, self.kv_heads, self.head_dim = kv_shape(talker.config)
        self.scale = self.layers[0].self_attn.scaling
        self.max_len = max_len
        shape = (rows, self.kv_heads, max_len, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        positions = torch.arange(max_len, device=self.device).view(1, 1, -1).expand(3, 1, -1)
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = model.rotary_emb(probe, positions)  # (3, 1, max_len, D); the three axes are equal
        self.cos, self.sin = cos[0, 0], sin[0, 0]

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def move(self, src: int, dst: int, length: int) -> None:
        for pool in (*self.keys, *self.values):
            pool[dst, :, :length] = pool[src, :, :length]

    def prefill(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Prompts ``x`` (N, T, H), right-padded, into ``rows`` (N,) at positions 0..T-1; hidden states (N, T, H).

        Causal attention over each prompt's own keys, as upstream's prefill (a
        right pad never reaches a real token). The pads' keys land past the
        prompt, where each decode step overwrites one before anyone attends to it.
        """
        length = x.shape[1]
        cos, sin = self.cos[:length].view(1, 1, length, -1), self.sin[:length].view(1, 1, length, -1)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys[index][rows, :, :length] = k
            self.values[index][rows, :, :length] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)

        return self._run(x, cos, sin, attend)

    def step(self, x: torch.Tensor, positions: torch.Tensor, keys: int) -> torch.Tensor:
        """One token per row for rows 0..B-1: ``x`` (B, 1, H) written at ``positions`` (B,); hidden (B, 1, H).

        Row b attends to pool positions 0..positions[b] (within the first ``keys``).
        Queries sharing a key-value head are folded into that head's query axis,
        so grouped attention reads each cached key once, with no copies.
        """
        batch = x.shape[0]
        cos, sin = self.cos[positions].view(batch, 1, 1, -1), self.sin[positions].view(batch, 1, 1, -1)
        row = torch.arange(batch, device=x.device)
        allowed = (torch.arange(keys, device=x.device) <= positions[:, None]).view(batch, 1, 1, keys)
        groups = self.heads // self.kv_heads

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            pool_k, pool_v = self.keys[index], self.values[index]
            pool_k[row, :, positions] = k[:, :, 0]
            pool_v[row, :, positions] = v[:, :, 0]
            folded = q.reshape(batch, self.kv_heads, groups, self.head_dim)
            out = F.scaled_dot_product_attention(folded, pool_k[:batch, :, :keys], pool_v[:batch, :, :keys], attn_mask=allowed, scale=self.scale)
            return out.reshape(batch, self.heads, 1, self.head_dim)

        return self._run(x, cos, sin, attend)

    def _run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = decoder_layer(layer, x, cos, sin, index, attend, self.spell_norm)
        return self.spell_norm(self.norm, x)


class PredictorStack:
    """The code predictor's layers over a per-frame scratch cache of 16 positions."""

    def __init__(self, predictor: Any, rows: int, positions: int) -> None:
        model = predictor.model
        weight = predictor.lm_head[0].weight
        self.device, self.dtype = weight.device, weight.dtype
        self.layers = list(model.layers)
        self.norm = model.norm
        self.project = predictor.small_to_mtp_projection
        self.heads, self.kv_heads, self.head_dim = kv_shape(model.config)
        self.scale = self.layers[0].self_attn.scaling
        shape = (rows, self.kv_heads, positions, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = model.rotary_emb(probe, torch.arange(positions, device=self.device)[None])  # (1, P, D)
        self.cos, self.sin = cos[0], sin[0]

    def run(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rows 0..B-1 at positions start..start+T-1 (the same for all): last hidden state (B, 1, H)."""
        batch, length = x.shape[:2]
        end = start + length
        cos, sin = self.cos[start:end].view(1, 1, length, -1), self.sin[start:end].view(1, 1, length, -1)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.keys[index][:batch], self.values[index][:batch]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            # Upstream: causal over the 2-token prefill, then one query over every key so far.
            return F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], is_causal=length > 1, scale=self.scale, enable_gqa=True
            )

        x = self.project(x)
        for index, layer in enumerate(self.layers):
            x = decoder_layer(layer, x, cos, sin, index, attend)
        return self.norm(x)[:, -1:]
