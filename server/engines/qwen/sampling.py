"""Choosing the next token of every row of a decode batch at once, on the device.

Upstream samples one stream at a time through transformers' logits processors:
a repetition penalty over the tokens sampled so far, EOS banned before
``min_new_tokens``, a fixed set of suppressed ids; then, when sampling, the
warpers temperature, top-k and top-p, and ``torch.multinomial`` over the
softmax (greedy decoding takes the argmax of the processed scores). Here each
row carries its own settings in device tensors (``Settings``) and one call
handles the whole batch with the same arithmetic, so at batch 1 the scores are
bitwise upstream's. Nothing here reads a value back to the host: it can run
inside a captured CUDA graph.

**The draw.** ``torch.multinomial(p, 1)`` is ``argmax(p / E)`` with one E ~
Exp(1) per entry (the exponential race; ATen implements a single draw that
way), so a sampler that takes E as an input *is* upstream's sampler, and the
only design choice is where E comes from (``noise.py``): a counter-based hash
of the row's own seed and progress (the server's path, inside the graphs), or
a torch.Generator per row drawn in upstream's order (the reference the tests
use to reproduce upstream's sampled codes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingPlan:
    """Which parts of the sampler the batch's graphs contain (every row of a model shares the config)."""

    talker_draws: bool
    predictor_draws: bool
    talker_top_p: bool
    predictor_top_p: bool
    talker_top_k: int = 0
    """The largest top-k a sampling row may ask for (a ``torch.topk`` of that size finds each row's
    k-th score); 0: any, found by a full sort."""
    predictor_top_k: int = 0

    @classmethod
    def from_kwargs(cls, kw: dict[str, Any]) -> SamplingPlan:
        def top_p(sample: Any, p: Any) -> bool:
            return bool(sample) and p is not None and float(p) < 1.0

        def top_k(sample: Any, k: Any) -> int:
            return max(0, int(k or 0)) if sample else 0

        return cls(
            talker_draws=bool(kw.get("do_sample")),
            predictor_draws=bool(kw.get("subtalker_dosample")),
            talker_top_p=top_p(kw.get("do_sample"), kw.get("top_p")),
            predictor_top_p=top_p(kw.get("subtalker_dosample"), kw.get("subtalker_top_p")),
            talker_top_k=top_k(kw.get("do_sample"), kw.get("top_k")),
            predictor_top_k=top_k(kw.get("subtalker_dosample"), kw.get("subtalker_top_k")),
        )

    def covers(self, kw: dict[str, Any]) -> bool:
        other = SamplingPlan.from_kwargs(kw)
        flags = all(not getattr(other, k) or getattr(self, k) for k in ("talker_draws", "predictor_draws", "talker_top_p", "predictor_top_p"))
        return flags and all(
            not draws or not mine or 0 < theirs <= mine
            for draws, mine, theirs in ((other.talker_draws, self.talker_top_k, other.talker_top_k),
                                        (other.predictor_draws, self.predictor_top_k, other.predictor_top_k))
        )  # fmt: skip


@dataclass
class Settings:
    """One side's sampling settings per row (the talker's first codebook, or the code predictor)."""

    greedy: torch.Tensor  # (R,) bool: argmax instead of a draw
    temperature: torch.Tensor  # (R, 1) float32; 1.0 when off
    top_k: torch.Tensor  # (R, 1) long, in 1..V; V when off
    top_p: torch.Tensor  # (R, 1) float32; 1.0 when off

    @classmethod
    def allocate(cls, rows: int, vocab: int, device: torch.device) -> Settings:
        return cls(
            greedy=torch.ones(rows, dtype=torch.bool, device=device),
            temperature=torch.ones(rows, 1, device=device),
            top_k=torch.full((rows, 1), vocab, dtype=torch.long, device=device),
            top_p=torch.ones(rows, 1, device=device),
        )

    def rows(self, index: slice | torch.Tensor) -> Settings:
        """The settings of some rows: a view for a slice, a gather for an index tensor."""
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def assign(self, row: int, kw: dict[str, Any], vocab: int) -> None:
        """Write one row from upstream-style keywords (do_sample, temperature, top_k, top_p)."""
        self.greedy[row] = not kw.get("do_sample")
        self.temperature[row] = float(kw.get("temperature") or 1.0)
        k = int(kw.get("top_k") or 0)
        self.top_k[row] = vocab if k <= 0 else min(k, vocab)
        p = kw.get("top_p")
        self.top_p[row] = 1.0 if p is None else float(p)

    def copy_row(self, src: int, dst: int) -> None:
        for f in fields(self):
            tensor = getattr(self, f.name)
            tensor[dst] = tensor[src]


@dataclass
class Penalties:
    """The talker's logits processors per row (upstream applies them before the warpers)."""

    repetition: torch.Tensor  # (R, 1) float32; 1.0 is no penalty
    min_new: torch.Tensor  # (R, 1) long: EOS is banned while fewer tokens were sampled
    eos: torch.Tensor  # (R, 1) long; an id >= V means "no EOS"
    suppress: torch.Tensor  # (R, V) bool

    @classmethod
    def allocate(cls, rows: int, vocab: int, device: torch.device) -> Penalties:
        return cls(
            repetition=torch.ones(rows, 1, device=device),
            min_new=torch.zeros(rows, 1, dtype=torch.long, device=device),
            eos=torch.full((rows, 1), vocab, dtype=torch.long, device=device),
            suppress=torch.zeros(rows, vocab, dtype=torch.bool, device=device),
        )

    def rows(self, index: slice | torch.Tensor) -> Penalties:
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def assign(self, row: int, kw: dict[str, Any]) -> None:
        """One row from upstream's talker keywords (repetition_penalty, min_new_tokens, eos_token_id, suppress_tokens)."""
        vocab = self.suppress.shape[1]
        self.repetition[row] = float(kw.get("repetition_penalty") or 1.0)
        self.min_new[row] = int(kw.get("min_new_tokens") or 0)
        eos = kw.get("eos_token_id")
        self.eos[row] = vocab if eos is None or not 0 <= int(eos) < vocab else int(eos)
        self.suppress[row] = False
        ids = [i for i in kw.get("suppress_tokens") or [] if 0 <= i < vocab]
        if ids:
            self.suppress[row, ids] = True

    def copy_row(self, src: int, dst: int) -> None:
        for f in fields(self):
            tensor = getattr(self, f.name)
            tensor[dst] = tensor[src]


def penalize(scores: torch.Tensor, seen: torch.Tensor, sampled: torch.Tensor, p: Penalties) -> torch.Tensor:
    """transformers' RepetitionPenalty, MinNewTokensLength and SuppressTokens processors, per row.

    ``seen`` (B, V) marks the tokens sampled so far (upstream gathers and scatters
    over that list, so a set is the same), ``sampled`` (B, 1) counts them.
    """
    penalized = torch.where(scores < 0, scores * p.repetition, scores / p.repetition)
    scores = torch.where(seen, penalized, scores)
    vocab = torch.arange(scores.shape[-1], device=scores.device)
    ban_eos = (sampled < p.min_new) & (vocab == p.eos)
    return scores.masked_fill(ban_eos | p.suppress, _NEG_INF)


def warp(scores: torch.Tensor, s: Settings, *, top_p: bool, top_k: int = 0) -> torch.Tensor:
    """transformers' Temperature, TopK and TopP warpers in generate's order, per row.

    ``top_p`` False leaves the top-p pass out (a sort and a softmax): the batch
    knows from its settings whether any row can use it. ``top_k`` > 0 bounds
    every row's k: the k-th score comes from a ``torch.topk`` of that size
    instead of a sort of the whole vocabulary (the same values, 10x cheaper for
    k = 50 of 2048 on a CPU).
    """
    scores = scores / s.temperature
    if 0 < top_k < scores.shape[-1]:
        ordered = torch.topk(scores, top_k, dim=-1).values
    else:
        ordered = torch.sort(scores, dim=-1, descending=True).values
    # The clamp only ever touches padding rows (their settings are the defaults, k = V): admission
    # holds every stream's k within the bound (``SamplingPlan.covers``).
    kth = ordered.gather(-1, (s.top_k - 1).clamp(max=ordered.shape[-1] - 1))
    scores = scores.masked_fill(scores < kth, _NEG_INF)
    if top_p:
        ascending, order = torch.sort(scores, dim=-1, descending=False)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - s.top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), _NEG_INF)
    return scores


def choose(scores: torch.Tensor, s: Settings, noise: torch.Tensor | None, *, top_p: bool, top_k: int = 0) -> torch.Tensor:
    """The next token per row (B,): argmax for greedy rows, the exponential race for the others.

    ``scores`` are float32 after the processors; ``noise`` (B, V) holds Exp(1)
    draws, or is None when no row samples.
    """
    best = scores.argmax(dim=-1)
    if noise is None:
        return best
    probs = warp(scores, s, top_p=top_p, top_k=top_k).softmax(dim=-1)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(s.greedy, best, drawn)
