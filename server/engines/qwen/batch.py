"""The persistent decode batch of one resident model: every live stream is a row, one step serves all.

Each stream holds a row from admission to its end. A row's state lives in
preallocated device tensors indexed by row: its talker keys and values (the
``TalkerStack`` pool), its length (the next position it writes), generation
step, frame cap, last hidden state and last token, its trailing text hidden
states, its sampling settings, the set of tokens it sampled (the repetition
penalty), its seed and its done flag. Rows come from a free list, lowest
first, and a released row is reused by the next admission.

``step`` advances every active row by one frame in one pass: the code
predictor's loop and one talker step, for rows ``0..B-1`` where ``B`` is the
smallest batch bucket covering the highest active row. Rows inside that
prefix that nobody holds are the padding: they compute alongside (their
cache writes go to the row's last position, which no stream reaches, and their
state is not advanced). Rows are kept dense at the bottom (``compact`` moves
the highest row down when a smaller bucket would do), so padding stays under
half the batch. The step is captured as a CUDA graph per (batch bucket, key
bucket) (``graphs.py``) and ends with one device-to-host copy of every row's
new frame and done flag.

``admit`` prefills new rows: their prompts right-padded into one batched
forward pass, their first tokens sampled with the same sampler, for as many
prompts as the scheduler's budget lets in, between steps. With graphs the
prompts are padded to a captured (admission bucket, length bucket) shape and
the prefill is one replay too (``graphs.py``); a prefill larger than every
captured shape runs eagerly.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import EngineError
from .compiled_predictor import CompiledCodePredictor
from .compiling import compiled
from .folded_predictor import FoldedCodePredictor
from .graphs import BATCH_BUCKETS, KEY_BUCKETS, PREFILL_GRAPH_POSITIONS, PREFILL_LENGTH_BUCKETS, Replay, bucket, buckets
from .layers import TalkerStack
from .noise import CounterNoise, GeneratorNoise
from .predictor import CodePredictor, Predictor
from .prompt import Prompt
from .sampling import Penalties, SamplingPlan, Settings, choose, penalize

DEFAULT_MAX_LEN = 2048  # prompt + frames per row: 1.7B keeps ~235 MB of bf16 keys and values per row
DEFAULT_MAX_TEXT = 512  # trailing text positions per row
logger = logging.getLogger("minestream.qwen")
PREDICTORS: dict[str, Callable[..., Predictor]] = {"folded": FoldedCodePredictor, "compiled": CompiledCodePredictor, "eager": CodePredictor}
"""The code predictor's forms: folded weights (the server's), the same compiled (``torch.compile``), upstream's
modules one by one (the reference)."""
TALKERS = ("modules", "compiled")
"""The talker step: upstream's modules over the batch's KV pool (``layers.TalkerStack``), or the same compiled."""


@dataclass(frozen=True)
class Admission:
    """One stream entering the batch."""

    prompt: Prompt
    max_frames: int
    seed: int | None = None
    """Its draws' seed; None: a random one (counter noise) or torch's default generator (generator noise)."""


class DecodeBatch:
    """Rows of per-stream decode state on the device, and the one step that advances them all."""

    def __init__(
        self,
        tts: Any,
        plan: SamplingPlan,
        *,
        rows: int,
        max_len: int = DEFAULT_MAX_LEN,
        max_text: int = DEFAULT_MAX_TEXT,
        graphs: bool = True,
        noise: str = "counter",
        predictor: str = "folded",
        talker: str = "modules",
        prefill_graph_positions: int = PREFILL_GRAPH_POSITIONS,
    ) -> None:
        if noise not in ("counter", "generator"):
            raise ValueError(f"noise must be counter or generator, not {noise!r}")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, not {predictor!r}")
        if talker not in TALKERS:
            raise ValueError(f"talker must be one of {', '.join(TALKERS)}, not {talker!r}")
        model = tts.model.talker
        config = model.config
        weight = model.codec_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.rows, self.max_len, self.max_text = rows, max_len, max_text
        self.plan = plan
        self.graphs = graphs and self.device.type == "cuda"
        self.vocab = config.vocab_size
        self.groups = config.num_code_groups - 1
        self.codec_head = model.codec_head
        self.stack = TalkerStack(model, rows, max_len)
        self.talker_form = talker
        self.talker_step = compiled(self.stack.step) if talker == "compiled" else self.stack.step
        self.predictor = PREDICTORS[predictor](model, rows, top_p=plan.predictor_top_p, top_k=plan.predictor_top_k)
        self.predictor_vocab = predictor_vocab = model.code_predictor.config.vocab_size
        self.batch_buckets = buckets(BATCH_BUCKETS, rows)
        self.key_buckets = buckets(KEY_BUCKETS, max_len)
        on = {"device": self.device}
        hidden = config.hidden_size
        self.position = torch.zeros(rows, dtype=torch.long, **on)
        self.step_count = torch.zeros(rows, dtype=torch.long, **on)
        self.sampled = torch.zeros(rows, 1, dtype=torch.long, **on)
        self.max_frames = torch.zeros(rows, dtype=torch.long, **on)
        self.last_hidden = torch.zeros(rows, 1, hidden, dtype=self.dtype, **on)
        self.last_token = torch.zeros(rows, dtype=torch.long, **on)
        self.text = torch.zeros(rows, max_text, hidden, dtype=self.dtype, **on)
        self.text_len = torch.zeros(rows, dtype=torch.long, **on)
        self.pad = torch.zeros(rows, 1, hidden, dtype=self.dtype, **on)
        self.seen = torch.zeros(rows, self.vocab, dtype=torch.bool, **on)
        self.done = torch.zeros(rows, dtype=torch.bool, **on)
        self.active = torch.zeros(rows, dtype=torch.bool, **on)
        self.seed = torch.zeros(rows, dtype=torch.long, **on)
        self.talker_settings = Settings.allocate(rows, self.vocab, self.device)
        self.predictor_settings = Settings.allocate(rows, predictor_vocab, self.device)
        self.penalties = Penalties.allocate(rows, self.vocab, self.device)
        self.talker_noise = torch.ones(rows, self.vocab, **on) if plan.talker_draws else None
        self.predictor_noise = torch.ones(rows, self.groups, predictor_vocab, **on) if plan.predictor_draws else None
        self.counter = CounterNoise(max(self.vocab, predictor_vocab), self.device) if noise == "counter" else None
        self.generators = GeneratorNoise(rows) if noise == "generator" else None
        self.out = torch.zeros(rows, self.groups + 2, dtype=torch.long, **on)
        """Each row's frame (16 codes) and done flag after a step: the one thing copied to the host."""
        pinned = self.device.type == "cuda"
        self._host_out = torch.zeros(rows, self.groups + 2, dtype=torch.long, pin_memory=pinned)
        self._per_row = [self.position, self.step_count, self.sampled, self.max_frames, self.last_hidden, self.last_token,
                         self.text, self.text_len, self.pad, self.seen, self.done, self.seed]  # fmt: skip
        self._free = list(range(rows))
        self._length: dict[int, int] = {}  # active row -> its next write position (a host mirror)
        self._replays: dict[tuple[int, int], Replay] = {}
        lengths = buckets(PREFILL_LENGTH_BUCKETS, max_len)
        self.prefill_shapes = [(n, t) for n in self.batch_buckets for t in lengths if n * t <= prefill_graph_positions] if graphs else []
        """(prompts, positions) shapes the prefill is padded to: captured on a GPU, run eagerly on a CPU (what the
        tests check); none without graphs: always eager, unpadded."""
        largest = max((n * t for n, t in self.prefill_shapes), default=0)
        most = max((n for n, _ in self.prefill_shapes), default=0)
        self._prefill_x = torch.zeros(largest * hidden, dtype=self.dtype, **on)  # viewed as (n, t, H) per shape
        self._prefill_rows = torch.zeros(most, dtype=torch.long, **on)
        self._prefill_lengths = torch.ones(most, dtype=torch.long, **on)
        self._prefill_token = torch.zeros(most, dtype=torch.long, **on)
        self._prefill_replays: dict[tuple[int, int], Replay] = {}
        self._pool: Any = None
        self._captured = 0
        self.steps = 0
        self.step_s: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=2048))
        """Recent step times (wall seconds, the copy to the host included) per batch bucket."""

    # -- rows --------------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self._length)

    @property
    def free_rows(self) -> int:
        return len(self._free)

    @property
    def graph_count(self) -> int:
        """Step and prefill graphs captured (0 without graphs); read from any thread."""
        return self._captured

    def active_rows(self) -> list[int]:
        return sorted(self._length)

    def bytes(self) -> int:
        """Device memory this batch preallocated (the pool, per-row state, buffers)."""
        tensors = [*self._per_row, self.active, self.out, *vars(self.talker_settings).values(),
                   *vars(self.predictor_settings).values(), *vars(self.penalties).values()]  # fmt: skip
        tensors += [t for t in (self.talker_noise, self.predictor_noise) if t is not None]
        tensors += self.predictor.scratch()
        tensors += [self._prefill_x, self._prefill_rows, self._prefill_lengths, self._prefill_token]
        return self.stack.bytes() + sum(t.numel() * t.element_size() for t in tensors)

    def release(self, row: int) -> None:
        """The row's stream ended or left: the row is free for the next admission."""
        if row not in self._length:
            raise ValueError(f"row {row} is not in use")
        del self._length[row]
        self.active[row] = False
        heapq.heappush(self._free, row)

    def compact(self) -> list[tuple[int, int]]:
        """Move the highest rows down into free ones while that lets a smaller bucket serve; the moves made."""
        moves = []
        while self._length:
            top = max(self._length)
            if bucket(self.batch_buckets, top + 1) <= bucket(self.batch_buckets, len(self._length)):
                break
            target = heapq.heappop(self._free)
            self._move(top, target)
            moves.append((top, target))
        return moves

    @torch.inference_mode()
    def _move(self, src: int, dst: int) -> None:
        self.stack.move(src, dst, self._length[src])
        for tensor in self._per_row:
            tensor[dst] = tensor[src]
        for settings in (self.talker_settings, self.predictor_settings, self.penalties):
            settings.copy_row(src, dst)
        if self.generators is not None:
            self.generators.move(src, dst)
        self.active[dst] = True
        self.active[src] = False
        self._length[dst] = self._length.pop(src)
        heapq.heappush(self._free, src)

    # -- admission -----------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, admissions: list[Admission]) -> tuple[list[int], list[bool]]:
        """Prefill new streams in one forward pass; their rows, and whether each ended at once (EOS first)."""
        if len(admissions) > len(self._free):
            raise RuntimeError(f"{len(admissions)} streams for {len(self._free)} free rows")
        for a in admissions:
            self.check(a.prompt)
        rows = [heapq.heappop(self._free) for _ in admissions]
        try:
            for row, a in zip(rows, admissions, strict=True):
                self._assign(row, a)
            token = self._prefill(rows, [a.prompt for a in admissions])
            done = (token == self.penalties.eos[rows, 0]).cpu().tolist()  # the one sync of an admission
        except BaseException:
            for row in rows:
                self.active[row] = False
                heapq.heappush(self._free, row)
            raise
        for row, a in zip(rows, admissions, strict=True):
            self._length[row] = a.prompt.length
        return rows, [bool(d) for d in done]

    def check(self, prompt: Prompt) -> None:
        """Raise ``EngineError`` for a prompt this batch cannot hold (length, text, sampling settings)."""
        if prompt.length > self.max_len - 2:
            raise EngineError(f"the prompt has {prompt.length} positions; a decode row holds {self.max_len}")
        if prompt.trailing_text_hidden.shape[1] > self.max_text:
            raise EngineError(f"the text is too long for one segment ({prompt.trailing_text_hidden.shape[1]} > {self.max_text} tokens)")
        if not self.plan.covers(prompt.talker_kwargs):
            raise EngineError("the request's sampling settings differ from the ones this model's batch was built for")

    def _assign(self, row: int, a: Admission) -> None:
        p, kw = a.prompt, a.prompt.talker_kwargs
        room = self.max_len - 1 - p.length  # the last position is the padding rows' scratch
        self.position[row] = p.length
        self.step_count[row] = 0
        self.sampled[row] = 0
        self.max_frames[row] = max(1, min(a.max_frames, room))
        n = p.trailing_text_hidden.shape[1]
        self.text[row, :n] = p.trailing_text_hidden[0]
        self.text_len[row] = n
        self.pad[row] = p.tts_pad_embed[0]
        self.seen[row] = False
        self.done[row] = False
        self.talker_settings.assign(row, kw, self.vocab)
        predictor_kw = {k: kw.get(f"subtalker_{k}") for k in ("temperature", "top_k", "top_p")}
        self.predictor_settings.assign(row, {**predictor_kw, "do_sample": kw.get("subtalker_dosample")}, self.predictor_vocab)
        self.penalties.assign(row, kw)
        seed = a.seed if a.seed is not None else secrets.randbits(63)
        self.seed[row] = seed
        if self.generators is not None:
            self.generators.seed(row, a.seed, self.device)

    def _prefill(self, rows: list[int], prompts: list[Prompt]) -> torch.Tensor:
        """Prefill ``prompts`` into ``rows``: one replay at a padded shape when one holds them, else eagerly."""
        if self.generators is not None and self.talker_noise is not None:
            self.generators.fill(self.talker_noise, rows)  # host-side draws, outside any graph
        shape = self.prefill_shape(len(prompts), max(p.length for p in prompts))
        if shape is None:
            return self.prefill_eager(rows, prompts)
        count, length = shape
        n = len(prompts)
        x = self._prefill_input(count, length)
        x.zero_()
        for i, p in enumerate(prompts):
            x[i, : p.length] = p.inputs_embeds[0]
        x[n:] = x[0]  # the padding entries repeat the first prompt into its own row
        self._prefill_rows[:n] = torch.tensor(rows)
        self._prefill_rows[n:count] = rows[0]
        self._prefill_lengths[:n] = torch.tensor([p.length for p in prompts])
        self._prefill_lengths[n:count] = prompts[0].length
        self._prefill_replay(count, length)()
        return self._prefill_token[:n].clone()

    def prefill_shape(self, prompts: int, longest: int) -> tuple[int, int] | None:
        """The captured (prompts, positions) shape a prefill of ``prompts`` up to ``longest`` long pads to; None: eager."""
        fits = [(n, t) for n, t in self.prefill_shapes if n >= prompts and t >= longest]
        return min(fits, key=lambda s: s[0] * s[1]) if fits else None

    def prefill_eager(self, rows: list[int], prompts: list[Prompt]) -> torch.Tensor:
        """The prefill op by op, each prompt padded only to the longest of them."""
        index = torch.tensor(rows, device=self.device)
        lengths = torch.tensor([p.length for p in prompts], device=self.device)
        x = torch.nn.utils.rnn.pad_sequence([p.inputs_embeds[0] for p in prompts], batch_first=True).to(self.dtype)
        token = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        self._prefill_rows_at(index, lengths, x, token)
        return token

    def _prefill_replay(self, count: int, length: int) -> Replay:
        def run() -> None:
            x = self._prefill_input(count, length)
            self._prefill_rows_at(self._prefill_rows[:count], self._prefill_lengths[:count], x, self._prefill_token[:count])

        return self._replay_of(self._prefill_replays, (count, length), run)

    def _prefill_input(self, count: int, length: int) -> torch.Tensor:
        """The fixed input buffer as (count, length, H): the same storage for every shape."""
        return self._prefill_x[: count * length * self.last_hidden.shape[-1]].view(count, length, -1)

    def _prefill_rows_at(self, rows: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor, token_out: torch.Tensor) -> None:
        """Prompts ``x`` (N, T, H) of ``lengths`` into ``rows``; their first tokens into ``token_out``. No host work:
        this is what a prefill graph captures (a row listed twice gets the same values twice)."""
        hidden = self.stack.prefill(x, rows)
        logits = self.codec_head(hidden)  # every position, as upstream does; the last real one is used
        pick = torch.arange(x.shape[0], device=self.device)
        last, logits = hidden[pick, lengths - 1][:, None], logits[pick, lengths - 1].float()
        noise = None
        if self.talker_noise is not None:
            if self.counter is not None:
                noise = self.counter.talker(self.seed[rows], torch.zeros_like(rows), self.vocab)
            else:
                noise = self.talker_noise[rows]
        scores = penalize(logits, self.seen[rows], self.sampled[rows], self.penalties.rows(rows))
        token = choose(scores, self.talker_settings.rows(rows), noise, top_p=self.plan.talker_top_p, top_k=self.plan.talker_top_k)
        self.last_hidden[rows] = last
        self.last_token[rows] = token
        self.seen[rows, token] = True
        self.sampled[rows] = 1
        self.done[rows] = token == self.penalties.eos[rows, 0]
        self.active[rows] = True
        token_out.copy_(token)

    # -- the step ------------------------------------------------------------------------------

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every (batch bucket, key bucket) step and every prefill shape as CUDA graphs now (no-op without graphs).

        Call it while no row is active: a padding-only step changes no row's
        state, and the prefills' warm-ups only touch rows that admission resets.
        A compiled predictor or talker step traces here too, with or without graphs.
        """
        self._trace_compiled()
        if not self.graphs:
            return
        if self._length:
            raise RuntimeError("capture the step graphs before any row is admitted")
        self._pool = torch.cuda.graph_pool_handle()
        for rows in self.batch_buckets:
            for keys in self.key_buckets:
                self._replay(rows, keys)
        try:
            for count, length in self.prefill_shapes:  # their warm-up runs prefill row 0 with zeros
                self._prefill_replay(count, length)
        except Exception:  # the step graphs stand; admission prefills eagerly, as it does beyond every shape
            logger.exception("prefill graph capture failed; prefill runs eagerly")
            self._captured -= sum(r.graph is not None for r in self._prefill_replays.values())
            self.prefill_shapes, self._prefill_replays = [], {}
        finally:
            self.active.zero_()

    @torch.inference_mode()
    def _trace_compiled(self) -> None:
        """Compiled code traces at its first calls, at one row and at more (a symbolic batch size), and the talker
        step at each key bucket: at start, then, not at the first streams' frames (a minute, on a CPU). The
        talker's warm-up writes only the last cache position, as padding rows do."""
        for rows in sorted({1, min(2, self.rows)}):
            index = slice(0, rows)
            if isinstance(self.predictor, CompiledCodePredictor):
                noise = None if self.predictor_noise is None else self.predictor_noise[index]
                self.predictor(self.last_hidden[index], self.last_token[index], self.predictor_settings.rows(index), noise)
            if self.talker_form == "compiled":
                # Inputs made here, as a step makes its own (inference tensors): a trace is kept only for its kind.
                x, last = self.last_hidden[index].clone(), torch.full((rows,), self.max_len - 1, device=self.device)
                for keys in self.key_buckets:
                    self.talker_step(x, last, keys)

    @property
    def graph_pool(self) -> Any:
        """The memory pool the batch's graphs share (None before ``capture`` or without graphs); the model's
        codec graphs join it: all of them replay one at a time, on the model's thread."""
        return self._pool

    def _replay(self, rows: int, keys: int) -> Replay:
        return self._replay_of(self._replays, (rows, keys), lambda: self._step(rows, keys))

    def _replay_of(self, replays: dict[tuple[int, int], Replay], shape: tuple[int, int], fn: Callable[[], None]) -> Replay:
        """``replays[shape]``, made from ``fn`` (and captured, with graphs) the first time it is asked for."""
        replay = replays.get(shape)
        if replay is None:
            replay = Replay(fn, self.device, graphs=self.graphs, pool=self._pool)
            replays[shape] = replay
            self._captured += replay.graph is not None
        return replay

    @torch.inference_mode()
    def step(self) -> np.ndarray:
        """Advance every active row by one frame; (B, 17): each row's frame codes and its done flag.

        Row r of the result belongs to the stream holding row r; the rest is padding.
        """
        if not self._length:
            return np.zeros((0, self.groups + 2), dtype=np.int64)
        rows = bucket(self.batch_buckets, max(self._length) + 1)
        keys = bucket(self.key_buckets, max(self._length.values()) + 1)
        started = time.perf_counter()
        if self.generators is not None:
            active = self.active_rows()
            if self.predictor_noise is not None:
                self.generators.fill(self.predictor_noise, active)
            if self.talker_noise is not None:
                self.generators.fill(self.talker_noise, active)
        self._replay(rows, keys)()
        out = self._host_out[:rows]
        out.copy_(self.out[:rows], non_blocking=self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        for row in self._length:
            self._length[row] += 1
        self.steps += 1
        self.step_s[rows].append(time.perf_counter() - started)
        return out.numpy().copy()

    def _step(self, batch: int, keys: int) -> None:
        """Rows 0..batch-1 one frame further; rows not active compute alongside and change nothing."""
        rows = slice(0, batch)
        active = self.active[rows]
        step = self.step_count[rows]
        if self.counter is not None and self.predictor_noise is not None:
            self.predictor_noise[rows] = self.counter.predictor(self.seed[rows], step, self.groups, self.predictor_vocab)
        if self.counter is not None and self.talker_noise is not None:
            self.talker_noise[rows] = self.counter.talker(self.seed[rows], step + 1, self.vocab)
        pnoise = None if self.predictor_noise is None else self.predictor_noise[rows]
        codes, embeds = self.predictor(self.last_hidden[rows], self.last_token[rows], self.predictor_settings.rows(rows), pnoise)
        self.out[rows, 0] = self.last_token[rows]
        self.out[rows, 1 : self.groups + 1] = codes
        index = torch.arange(batch, device=self.device)
        text = self.text[index, step.clamp(max=self.max_text - 1)]
        text = torch.where((step < self.text_len[rows])[:, None], text, self.pad[rows, 0])
        positions = torch.where(active, self.position[rows], self.max_len - 1)
        hidden = self.talker_step(embeds + text[:, None], positions, keys)
        logits = self.codec_head(hidden)[:, -1].float()
        scores = penalize(logits, self.seen[rows], self.sampled[rows], self.penalties.rows(rows))
        tnoise = None if self.talker_noise is None else self.talker_noise[rows]
        token = choose(scores, self.talker_settings.rows(rows), tnoise, top_p=self.plan.talker_top_p, top_k=self.plan.talker_top_k)
        finished = active & ((token == self.penalties.eos[rows, 0]) | (step + 1 >= self.max_frames[rows]))
        grow = active.long()
        self.position[rows] += grow
        self.step_count[rows] += grow
        self.sampled[rows] += grow[:, None]
        self.last_hidden[rows] = torch.where(active[:, None, None], hidden, self.last_hidden[rows])
        self.last_token[rows] = torch.where(active, token, self.last_token[rows])
        seen = self.seen[rows]
        seen.scatter_(1, token[:, None], seen.gather(1, token[:, None]) | active[:, None])
        self.done[rows] |= finished
        self.out[rows, self.groups + 1] = finished.long()
