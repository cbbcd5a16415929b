"""The folded code predictor under ``torch.compile``: one traced codebook step, replayed for every codebook.

Under CUDA graphs a folded frame still launches ~2,100 kernels, most of them
elementwise work between the matrix products (norms, rotary, residual adds, the
activation, the sampler's masks): issue 16's frame cost. Inductor fuses those
into a few generated kernels (Triton on a GPU, C++ on a CPU). Compiling the
folded loop as written traces 15 codebooks of 5 layers unrolled, each with its
own attention length, which takes minutes. So the frame is split into three
functions, each traced once:

* ``first``: the frame's first two positions (the talker's hidden state and
  the first code), causal, as the folded predictor runs them;
* ``step``: sample codebook ``i`` from the hidden state, look up its next
  input and run it at position ``i + 2``. The codebook is a device tensor, not
  a Python int, so the same trace (and, on a GPU, the same kernels inside the
  batch's graph) serves codebooks 0..13: its rotary row and its key and value
  slot are gathered by index, and it attends to all 16 scratch positions with
  the later ones masked;
* ``last``: sample the final codebook.

Masking changes no value: a masked key's softmax weight is exactly zero, and
the keys it hides are finite (zeros, or an earlier frame's). The frame's summed
embedding stays outside, eager and in upstream's order. In float32 on a CPU the
codes equal the folded predictor's (``tests/test_qwen_batch.py``); in bf16 on
a GPU ``bench.qwen_profile`` reports the agreement rate and the time beside
the folded predictor.

The batch dimension is left to the compiler: one trace for a single row and
one with a symbolic batch size, whatever buckets the batch captures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .compiling import compiled
from .folded_predictor import FoldedCodePredictor
from .layers import normalise
from .sampling import Settings, choose


class CompiledCodePredictor(FoldedCodePredictor):
    """``FoldedCodePredictor``'s contract and weights, its loop as three compiled functions."""

    @torch.inference_mode()
    def __init__(self, talker: Any, rows: int, *, top_p: bool, top_k: int = 0, backend: str | None = None) -> None:
        super().__init__(talker, rows, top_p=top_p, top_k=top_k)
        self.table_stack = torch.stack(self.tables)  # (15, V, H): codebook i's code -> the next input
        self.tables = list(self.table_stack.unbind())  # views: the tables are held once
        self.codebooks = torch.arange(self.groups, device=self.device)
        self.key_positions = torch.arange(self.groups + 1, device=self.device)
        self.first = compiled(self._first_hidden, backend)
        self.step = compiled(self._step, backend)
        self.last = compiled(self._sample, backend)

    def __call__(
        self, past_hidden: torch.Tensor, token: torch.Tensor, settings: Settings, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``past_hidden`` (B, 1, H), ``token`` (B,), ``noise`` (B, 15, V) or None -> codes (B, 15), embeds (B, 1, H)."""
        hidden = self.first(past_hidden, token)
        codes = []
        for i in range(self.groups - 1):
            code, hidden = self.step(hidden, self.codebooks[i], settings, noise)
            codes.append(code)
        codes.append(self.last(hidden, self.codebooks[-1], settings, noise))
        return torch.stack(codes, dim=1), self._summed_embedding(token, codes)  # eager: upstream's order

    def _sample(self, hidden: torch.Tensor, codebook: torch.Tensor, settings: Settings, noise: torch.Tensor | None) -> torch.Tensor:
        logits = (hidden @ _pick(self.head, 0, codebook).T).float()
        return choose(logits, settings, None if noise is None else _pick(noise, 1, codebook), top_p=self.top_p, top_k=self.top_k)

    def _step(
        self, hidden: torch.Tensor, codebook: torch.Tensor, settings: Settings, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        code = self._sample(hidden, codebook, settings, noise)
        return code, self._at(self.table_stack[codebook.view(1), code][:, None], codebook + 2)

    def _at(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One position per row, the same for all rows, given as a device tensor: the hidden state (B, H)."""
        batch = x.shape[0]
        where = position.view(1)
        cos, sin = self.cos.index_select(0, where).view(1, 1, 1, -1), self.sin.index_select(0, where).view(1, 1, 1, -1)
        visible = (self.key_positions <= position).view(1, 1, 1, -1)
        groups = self.heads // self.kv_heads

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.keys[index][:batch], self.values[index][:batch]
            keys.index_copy_(2, where, k)
            values.index_copy_(2, where, v)
            # The queries sharing a key-value head are one query axis of that head: each key is read once.
            folded = q.reshape(batch, self.kv_heads, groups, self.head_dim)
            out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=visible, scale=self.scale)
            return out.reshape(batch, self.heads, 1, self.head_dim)

        for index, layer in enumerate(self.layers):
            x = self._decoder_layer(index, layer, x, cos, sin, attend)
        return normalise(x[:, -1], self.eps_final)


def _pick(stack: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``stack`` at a position along ``dim`` given as a 0-d device tensor (plain indexing would read it on the host)."""
    return stack.index_select(dim, index.view(1)).squeeze(dim)

