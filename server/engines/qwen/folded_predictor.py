"""The code predictor with its weights folded: fewer, larger kernels per codebook, the same codes.

``CodePredictor`` calls upstream's modules one by one: per layer an RMSNorm
(six kernels), three projections, two per-head norms, rotary, attention, the
output projection, a second RMSNorm, gate and up projections and the down
projection; per codebook an embedding, the input projection of the whole
sequence, the final norm and a head. A frame runs that 15 times, which is
where a 1.7B frame spends most of its time on a GPU: hundreds of small
kernels (issue 16). Everything linear that sits next to something else linear
folds into one weight, once, at construction:

* each RMSNorm's weight into the projections that read it (``W diag(w)``):
  the input norm into one concatenated Q/K/V weight, the post-attention norm
  into one gate/up weight, the final norm into every codebook's head;
* the codebook embeddings and the input projection (``small_to_mtp``) into one
  table per codebook, ``project(embedding)``, so a sampled code's next input is
  one row lookup; the first code's table likewise from the talker's embedding;
* the 15 heads into one stacked weight.

And two spellings that issue fewer ops for the same values: every RMSNorm as
one ``F.rms_norm`` (upstream's spelling is six ops: pow, mean, add, rsqrt and
two multiplies), and rotary as ``roll`` times a sine whose first half is negated (exactly
``rotate_half(x) * sin``, without the negation and the concatenation). At the
real depth (5 layers) a frame dispatches 2,120 ops instead of 3,905, and
matrix products 315 instead of 540 (``bench/RESULTS.md``).

What stays as upstream computes it: the per-head query and key norms' weights
(they follow a normalisation of the projected heads, so nothing linear sits
next to them), attention, the activation, the sampler, and the frame's summed
embedding (from the unprojected tables, in upstream's order). Folding moves
rounding, not arithmetic: in float32 the codes are the same as the eager path's
and upstream's, and the summed embedding agrees to float32 rounding
(tests/test_qwen_batch.py); in bf16 the agreement rate is what the GPU
benchmark reports (``bench.qwen_profile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .layers import Attend, fused_norm, kv_shape, normalise
from .sampling import Settings, choose


@dataclass
class FoldedLayer:
    """One predictor layer's folded weights."""

    qkv: torch.Tensor  # (q + k + v, H): input norm folded in
    qkv_bias: torch.Tensor | None
    q_norm: Any
    k_norm: Any
    out: torch.Tensor  # (H, q)
    out_bias: torch.Tensor | None
    gate_up: torch.Tensor  # (2 I, H): post-attention norm folded in
    down: torch.Tensor  # (H, I)
    act: Any
    eps_in: float
    eps_post: float


def _fold(weight: torch.Tensor, norm: Any) -> torch.Tensor:
    """``W diag(w)``: a linear map that reads an RMSNorm's output, with the norm's weight inside."""
    return weight * norm.weight[None, :].to(weight.dtype)


def _fold_layer(layer: Any) -> FoldedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    biases = [p.bias for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    return FoldedLayer(
        qkv=_fold(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), layer.input_layernorm),
        qkv_bias=None if biases[0] is None else torch.cat(biases),
        q_norm=attn.q_norm,
        k_norm=attn.k_norm,
        out=attn.o_proj.weight,
        out_bias=attn.o_proj.bias,
        gate_up=_fold(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), layer.post_attention_layernorm),
        down=mlp.down_proj.weight,
        act=mlp.act_fn,
        eps_in=layer.input_layernorm.variance_epsilon,
        eps_post=layer.post_attention_layernorm.variance_epsilon,
    )


class FoldedCodePredictor:
    """``CodePredictor``'s contract over folded weights: ``(past_hidden, first code) -> (codes 1..15, summed embedding)``."""

    @torch.inference_mode()
    def __init__(self, talker: Any, rows: int, *, top_p: bool, top_k: int = 0) -> None:
        predictor = talker.code_predictor
        model = predictor.model
        self.groups = talker.config.num_code_groups - 1
        self.top_p, self.top_k = top_p, top_k
        self.layers = [_fold_layer(layer) for layer in model.layers]
        self.heads, self.kv_heads, self.head_dim = kv_shape(model.config)
        self.scale = model.layers[0].self_attn.scaling
        self.eps_final = model.norm.variance_epsilon
        self.head = torch.stack([_fold(h.weight, model.norm) for h in predictor.lm_head])  # (15, V, H)
        project = predictor.small_to_mtp_projection
        self.project = project
        first = talker.get_input_embeddings().weight
        self.first_raw = first
        self.first_table = project(first)  # (talker vocab, H)
        embeddings = predictor.model.get_input_embeddings()
        self.raw = [e.weight for e in embeddings]  # (V, talker H) each: what the talker's next input sums
        self.tables = [project(w) for w in self.raw]  # (V, H) each: the predictor's next input
        weight = self.head
        self.device, self.dtype = weight.device, weight.dtype
        positions = self.groups + 1
        shape = (rows, self.kv_heads, positions, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = model.rotary_emb(probe, torch.arange(positions, device=self.device)[None])
        half = self.head_dim // 2
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)  # signed for the roll
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim

    def scratch(self) -> list[torch.Tensor]:
        """The per-frame caches (per row: the batch counts their memory)."""
        return [*self.keys, *self.values]

    def weights(self) -> list[torch.Tensor]:
        """The folded copies (once per model: the memory plan counts them beside the weights, ``manager.folded_bytes``)."""
        return [self.head, self.first_table, *self.tables, *(w for layer in self.layers for w in (layer.qkv, layer.gate_up))]

    def __call__(
        self, past_hidden: torch.Tensor, token: torch.Tensor, settings: Settings, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``past_hidden`` (B, 1, H), ``token`` (B,), ``noise`` (B, 15, V) or None -> codes (B, 15), embeds (B, 1, H)."""
        hidden = self._first_hidden(past_hidden, token)
        codes = []
        for i in range(self.groups):
            logits = (hidden @ self.head[i].T).float()
            code = choose(logits, settings, None if noise is None else noise[:, i], top_p=self.top_p, top_k=self.top_k)
            codes.append(code)
            if i + 1 < self.groups:
                hidden = self._run(self.tables[i][code][:, None], i + 2)
        return torch.stack(codes, dim=1), self._summed_embedding(token, codes)

    def _first_hidden(self, past_hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The frame's first two positions (the talker's hidden state, the first code), causal: the hidden state (B, H)."""
        return self._run(torch.cat((self.project(past_hidden), self.first_table[token][:, None]), dim=1), 0)

    def _summed_embedding(self, token: torch.Tensor, codes: list[torch.Tensor]) -> torch.Tensor:
        """The talker's next input: all 16 codebooks' embeddings from the unprojected tables, (B, 1, talker H)."""
        parts = [self.first_raw[token][:, None], *(self.raw[i][code][:, None] for i, code in enumerate(codes))]
        return torch.cat(parts, dim=1).sum(1, keepdim=True)  # one reduction, as upstream sums

    def _run(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rows 0..B-1 at positions start..start+T-1: the last position's hidden state, normalised (B, H)."""
        batch, length = x.shape[:2]
        end = start + length
        cos, sin = self.cos[start:end].view(1, 1, length, -1), self.sin[start:end].view(1, 1, length, -1)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.keys[index][:batch], self.values[index][:batch]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            return F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], is_causal=end - start > 1, scale=self.scale, enable_gqa=True
            )

        for index, layer in enumerate(self.layers):
            x = self._decoder_layer(index, layer, x, cos, sin, attend)
        return normalise(x[:, -1], self.eps_final)

    def _decoder_layer(self, index: int, w: FoldedLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        qkv = F.linear(normalise(x, w.eps_in), w.qkv, w.qkv_bias)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = fused_norm(w.q_norm, q.view(shape)).transpose(1, 2)
        k = fused_norm(w.k_norm, k.view(shape)).transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        # rotate_half(x) * sin == roll(x, D/2) * (sin with its first half negated), exactly: one op, not two.
        q = (q * cos) + (q.roll(self.head_dim // 2, -1) * sin)
        k = (k * cos) + (k.roll(self.head_dim // 2, -1) * sin)
        out = attend(index, q, k, v)
        x = x + F.linear(out.transpose(1, 2).reshape(*x.shape[:-1], -1), w.out, w.out_bias)
        gate, up = F.linear(normalise(x, w.eps_post), w.gate_up).chunk(2, dim=-1)
        return x + F.linear(w.act(gate) * up, w.down)
