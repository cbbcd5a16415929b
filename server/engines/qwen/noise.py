"""Where a row's random draws come from: Exp(1) noise for the exponential race (``sampling.choose``).

Each frame a row draws 15 times for the code predictor (one per residual
codebook) and once for the talker's next first-codebook token. A draw is a
vector of Exp(1) variables, one per vocabulary entry. Two sources:

* ``CounterNoise`` (the server's): E = -log U with U a hash of (row seed, draw
  counter, vocabulary index). It is counter-based like Philox: no state to
  advance, computed on the device inside the captured step, and a row's draws
  depend only on its own seed and its own progress (the counter is the row's
  generation step and the draw's slot in the frame), never on which rows share
  the batch, on bucket padding, or on the row index it happens to hold. The
  hash is Wellons' lowbias32 on 32-bit lanes held in int64 (each multiply is
  split in 16-bit halves so nothing overflows), 23 bits of it make U.
* ``GeneratorNoise`` (the reference): one ``torch.Generator`` per row (None: the
  global default generator), drawn with ``Tensor.exponential_`` outside the
  graph, in upstream's order and sizes. ``torch.multinomial`` draws exactly so,
  hence a batch of one row seeded like upstream reproduces its sampled codes bit
  for bit. It costs a launch per draw per row, so it is a test and debug path.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_SLOTS = 16  # draws per frame: slot 0 the talker's token, 1..15 the predictor's codebooks


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for int64 x in [0, 2**32): 16-bit halves keep every product below 2**49."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * m + (((hi * m) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash of 32-bit values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class CounterNoise:
    """Exp(1) draws that are a pure function of (seed, counter, vocabulary index)."""

    def __init__(self, vocab: int, device: torch.device) -> None:
        self.lanes = mix32(torch.arange(vocab, dtype=torch.long, device=device) ^ 0x9E3779B9)

    def draw(self, seed: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
        """``seed`` (B,), ``counter`` (B, S) -> (B, S, vocab) float32 Exp(1) noise."""
        key = mix32(mix32(mix32(counter & _M32) ^ (seed[:, None] & _M32)) ^ ((seed[:, None] >> 32) & _M32))
        # 23 bits: the largest U, 1 - 2**-24, is still below 1 in float32, so E is never 0.
        bits = mix32(key[..., None] ^ self.lanes[:vocab]) >> 9
        uniform = (bits.float() + 0.5) * (1.0 / (1 << 23))
        return -torch.log(uniform)

    def predictor(self, seed: torch.Tensor, step: torch.Tensor, groups: int, vocab: int) -> torch.Tensor:
        """The predictor's draws for the frame at ``step`` (B,): (B, groups, vocab)."""
        slots = torch.arange(1, groups + 1, device=step.device)
        return self.draw(seed, step[:, None] * _SLOTS + slots, vocab)

    def talker(self, seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
        """The talker's draw for the token that follows ``step`` frames: (B, vocab)."""
        return self.draw(seed, (step * _SLOTS)[:, None], vocab)[:, 0]


class GeneratorNoise:
    """Exp(1) draws from one torch.Generator per row, in upstream's order."""

    def __init__(self, rows: int) -> None:
        self.generators: list[torch.Generator | None] = [None] * rows

    def seed(self, row: int, seed: int | None, device: torch.device) -> None:
        """``seed`` None: the row draws from torch's default generator, as upstream does."""
        self.generators[row] = None if seed is None else torch.Generator(device).manual_seed(seed)

    def move(self, src: int, dst: int) -> None:
        self.generators[dst] = self.generators[src]

    @torch.inference_mode()
    def fill(self, out: torch.Tensor, rows: list[int]) -> None:
        """Draw into ``out[row]`` for each row; ``out`` is (R, V) or (R, groups, V), one draw per (row, group)."""
        for row in rows:
            draws = out[row] if out.dim() == 3 else out[row : row + 1]
            for draw in draws:
                draw.exponential_(1, generator=self.generators[row])
