"""The code predictor: the 15 residual codebooks of one frame, for every row of a batch at once.

A frame's first code comes from the talker; the code predictor (a small
transformer) then produces the other 15 one after another: its input is the
talker's last hidden state and the first code's embedding, and each code it
samples is embedded and fed back. The talker's next input is the sum of all
16 codebook embeddings. Upstream runs this as a nested ``generate`` per frame
per stream; ``CodePredictor`` runs it for rows ``0..B-1`` together, with the
rows' own sampling settings and noise, and no host syncs, so the whole loop is
captured inside the batch's step graph.

This is the reference form, upstream's modules called one by one;
``folded_predictor.FoldedCodePredictor`` is the same contract over folded
weights (the server's default), and anything with this ``__call__`` and
``scratch`` plugs in.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .layers import PredictorStack
from .sampling import Settings, choose


class Predictor(Protocol):
    """What the decode batch needs of a code predictor."""

    def scratch(self) -> list[torch.Tensor]: ...

    def __call__(
        self, past_hidden: torch.Tensor, token: torch.Tensor, settings: Settings, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class CodePredictor:
    """``(past_hidden, first code) -> (codes 1..15, the frame's summed embedding)`` for rows 0..B-1."""

    def __init__(self, talker: Any, rows: int, *, top_p: bool, top_k: int = 0) -> None:
        predictor = talker.code_predictor
        self.groups = talker.config.num_code_groups - 1
        self.first_embedding = talker.get_input_embeddings()
        self.embeddings = predictor.model.get_input_embeddings()
        self.heads = predictor.lm_head
        self.stack = PredictorStack(predictor, rows, self.groups + 1)
        self.top_p, self.top_k = top_p, top_k

    def scratch(self) -> list[torch.Tensor]:
        """The per-frame caches this predictor preallocated (the batch counts their memory)."""
        return [*self.stack.keys, *self.stack.values]

    def __call__(
        self, past_hidden: torch.Tensor, token: torch.Tensor, settings: Settings, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``past_hidden`` (B, 1, H), ``token`` (B,), ``noise`` (B, 15, V) or None -> codes (B, 15), embeds (B, 1, H)."""
        first = self.first_embedding(token[:, None])
        hidden = self.stack.run(torch.cat((past_hidden, first), dim=1), 0)
        parts = [first]
        codes = []
        for i in range(self.groups):
            logits = self.heads[i](hidden)[:, -1].float()
            code = choose(logits, settings, None if noise is None else noise[:, i], top_p=self.top_p, top_k=self.top_k)
            codes.append(code)
            parts.append(self.embeddings[i](code[:, None]))
            if i + 1 < self.groups:
                hidden = self.stack.run(parts[-1], i + 2)
        embeds = torch.cat(parts, dim=1).sum(1, keepdim=True)  # one reduction, as upstream sums
        return torch.stack(codes, dim=1), embeds
