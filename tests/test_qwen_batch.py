"""The decode batch on tiny random-weight models: rows decoded together against one by one and against upstream.

No threads here: the tests drive ``DecodeBatch`` the way the scheduler does
(admit when a row is free, step, release finished rows, compact), so every
join, leave and move happens at a chosen round.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from server.engines.base import SAMPLE_RATE  # noqa: E402
from server.engines.qwen import compat  # noqa: E402
from server.engines.qwen.batch import Admission, DecodeBatch  # noqa: E402
from server.engines.qwen.compiled_predictor import CompiledCodePredictor  # noqa: E402
from server.engines.qwen.compiling import BACKEND_VARIABLE  # noqa: E402
from server.engines.qwen.folded_predictor import FoldedCodePredictor  # noqa: E402
from server.engines.qwen.manager import folded_bytes, plan_memory, row_bytes  # noqa: E402
from server.engines.qwen.noise import CounterNoise  # noqa: E402
from server.engines.qwen.predictor import CodePredictor  # noqa: E402
from server.engines.qwen.prompt import Prompt, capture_prompt, sampling_kwargs  # noqa: E402
from server.engines.qwen.sampling import Penalties, SamplingPlan, Settings, choose, penalize, warp  # noqa: E402
from server.errors import EngineError  # noqa: E402
from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models  # the session fixture (conftest may import it too)

GREEDY = {"do_sample": False, "subtalker_dosample": False}
SAMPLED = {"do_sample": True, "subtalker_dosample": True}
DEVICE = os.environ.get("MINESTREAM_QWEN_DEVICE", "cpu")
GRAPHS = DEVICE != "cpu"  # on a GPU the same tests replay the captured step graphs
# The compiled predictor's backend: Inductor's kernels on a GPU; on a CPU the same traced graphs run op by op
# (Inductor's C++ would add a minute of compiling; MINESTREAM_TEST_INDUCTOR=1 asks for it anyway).
COMPILE_BACKEND = "inductor" if GRAPHS or os.environ.get("MINESTREAM_TEST_INDUCTOR") else "aot_eager"


@pytest.fixture(autouse=True)
def compile_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_VARIABLE, COMPILE_BACKEND)


def _ref_audio(seconds: float = 1.6, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.RandomState(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.randn(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def upstream(qwen_tiny_models: tuple[Path, Path]) -> tuple[Any, Any]:
    qwen_tts = compat.import_qwen_tts()
    load = qwen_tts.Qwen3TTSModel.from_pretrained
    where = {} if DEVICE == "cpu" else {"device_map": DEVICE}
    design, base = qwen_tiny_models
    return load(str(design), dtype=torch.float32, **where), load(str(base), dtype=torch.float32, **where)


Case = tuple[Any, str, dict[str, Any]]
"""A model, its generate_* method and the method's arguments (sampling settings apart)."""


@pytest.fixture(scope="module")
def cases(upstream: tuple[Any, Any]) -> dict[str, Case]:
    design, base = upstream
    ref = (_ref_audio(), SAMPLE_RATE)
    icl = base.create_voice_clone_prompt(ref_audio=ref, ref_text="The quick fox.", x_vector_only_mode=False)
    icl_long = base.create_voice_clone_prompt(ref_audio=(_ref_audio(2.4, seed=5), SAMPLE_RATE), ref_text="A longer reference.", x_vector_only_mode=False)
    xvec = base.create_voice_clone_prompt(ref_audio=ref, x_vector_only_mode=True)

    def said(text: str, **extra: Any) -> dict[str, Any]:
        return {"text": text, "language": "English", **extra}

    return {
        "short": (design, "generate_voice_design", said("Hi.", instruct="calm")),
        "medium": (design, "generate_voice_design", said("Hello world. How are you?", instruct="a calm low voice")),
        "long": (design, "generate_voice_design", said("The quick brown fox jumps over the lazy dog again and again, once more.", instruct="bright")),
        "other": (design, "generate_voice_design", said("One two three, four five.", instruct="an old man with a deep voice")),
        "xvec": (base, "generate_voice_clone", said("Cloned speech here.", voice_clone_prompt=xvec)),
        "icl": (base, "generate_voice_clone", said("Hello.", voice_clone_prompt=icl)),
        "icl-long": (base, "generate_voice_clone", said("Another cloned sentence.", voice_clone_prompt=icl_long)),
    }


def _prompt(tts: Any, method: str, kwargs: dict[str, Any], sampling: dict[str, Any]) -> Prompt:
    return capture_prompt(tts, method, **kwargs, **sampling_kwargs(tts, {**sampling, "max_new_tokens": 200}))


def _batch(tts: Any, sampling: dict[str, Any], rows: int, noise: str = "counter", predictor: str = "folded", graphs: bool = GRAPHS,
           **options: Any) -> DecodeBatch:  # fmt: skip
    plan = SamplingPlan.from_kwargs(sampling_kwargs(tts, sampling))
    batch = DecodeBatch(tts, plan, rows=rows, max_len=256, graphs=graphs, noise=noise, predictor=predictor, **options)
    batch.capture()
    return batch


def _drive(batch: DecodeBatch, streams: list[tuple[int, str, Admission]]) -> dict[str, np.ndarray]:
    """Run (join round, name, admission) streams to their ends as the scheduler would; each one's codes (T, 16).

    A stream joins at its round or, when no row is free then, as soon as one is.
    """
    waiting = sorted(streams, key=lambda s: s[0])
    holder: dict[int, str] = {}
    frames: dict[str, list[np.ndarray]] = {}
    for round_ in range(10_000):
        if not waiting and not holder:
            return {name: np.stack(f) for name, f in frames.items()}
        joining = [s for s in waiting if s[0] <= round_][: batch.free_rows]
        if joining:
            rows, ended = batch.admit([a for _, _, a in joining])
            assert not any(ended)
            for row, (_, name, _) in zip(rows, joining, strict=True):
                holder[row], frames[name] = name, []
                waiting.remove(next(s for s in waiting if s[1] == name))
        out = batch.step()
        for row, name in list(holder.items()):
            frames[name].append(out[row, :16].copy())
            if out[row, 16]:
                batch.release(row)
                del holder[row]
        for src, dst in batch.compact():
            holder[dst] = holder.pop(src)
    raise AssertionError("the streams did not end")


@pytest.mark.parametrize(
    "model,predictor,talker", [("design", "folded", "modules"), ("base", "folded", "modules"), ("design", "eager", "modules"), ("base", "compiled", "compiled")]
)
def test_rows_decoded_together_equal_one_by_one_and_upstream(
    upstream: tuple[Any, Any], cases: dict[str, Case], model: str, predictor: str, talker: str
) -> None:
    """Greedy: different prompt lengths, rows joining and leaving mid-stream, more streams than rows; every predictor,
    and the compiled talker step."""
    names = ("short", "medium", "long") if model == "design" else ("xvec", "icl", "icl-long")
    mine = {name: cases[name] for name in names}
    tts = upstream[0] if model == "design" else upstream[1]
    caps = {name: 4 + 2 * i for i, name in enumerate(mine)}
    admissions = {name: Admission(_prompt(tts, method, kw, GREEDY), caps[name]) for name, (_, method, kw) in mine.items()}
    assert len({a.prompt.length for a in admissions.values()}) == len(admissions)  # every prompt length differs
    schedule = [(2 * i, name, a) for i, (name, a) in enumerate(admissions.items())]
    together = _drive(_batch(tts, GREEDY, rows=2, predictor=predictor, talker=talker), schedule)
    for name, admission in admissions.items():
        alone = _drive(_batch(tts, GREEDY, rows=1, predictor=predictor, talker=talker), [(0, name, admission)])[name]
        _, method, kw = mine[name]
        expected, _ = qwen_tiny.upstream_generate(tts, method, **kw, **GREEDY, max_new_tokens=caps[name] + 1)
        assert alone.shape == (caps[name], 16)
        np.testing.assert_array_equal(alone, expected.cpu().numpy(), err_msg=f"{name}: alone vs upstream")
        np.testing.assert_array_equal(together[name], alone, err_msg=f"{name}: in the batch vs alone")


@pytest.mark.parametrize(
    "case,overrides",
    [("medium", {}), ("icl", {}), ("xvec", {"top_k": 20, "top_p": 0.8, "temperature": 0.7, "subtalker_top_p": 0.9, "repetition_penalty": 1.3})],
)
def test_generator_noise_reproduces_upstream_sampling(cases: dict[str, Case], case: str, overrides: dict[str, Any]) -> None:
    """One row drawing from torch's default generator in upstream's order gives upstream's sampled codes, bit for bit.

    This checks the batched processors and warpers (penalty, min new tokens,
    suppressed ids, temperature, top-k, top-p) against transformers' own.
    """
    tts, method, kw = cases[case]
    sampling = {**SAMPLED, **overrides}
    batch = _batch(tts, sampling, rows=2, noise="generator")
    prompt = _prompt(tts, method, kw, sampling)
    torch.manual_seed(11)
    codes = _drive(batch, [(0, case, Admission(prompt, 12))])[case]
    torch.manual_seed(11)
    expected, _ = qwen_tiny.upstream_generate(tts, method, **kw, **sampling, max_new_tokens=13)
    np.testing.assert_array_equal(codes, expected.cpu().numpy())


def test_seeded_rows_do_not_depend_on_their_company(upstream: tuple[Any, Any], cases: dict[str, Case]) -> None:
    """Counter-based draws: a row's sampled codes follow from its seed, whatever shares the batch or which row it holds."""
    design = upstream[0]
    sampling = {**SAMPLED, "top_p": 0.9}
    prompts = {name: _prompt(design, cases[name][1], cases[name][2], sampling) for name in ("medium", "long", "other")}

    def run(streams: list[tuple[int, str, str, int]], rows: int) -> dict[str, np.ndarray]:
        return _drive(_batch(design, sampling, rows), [(r, label, Admission(prompts[case], 9, seed)) for r, label, case, seed in streams])

    alone = run([(0, "a", "medium", 7)], 1)["a"]
    # a joins third (row 2); b and c leave first, and a moves down when the batch shrinks
    crowd = run([(0, "b", "long", 8), (1, "c", "other", 9), (2, "a", "medium", 7), (3, "twin", "medium", 7)], 4)
    np.testing.assert_array_equal(crowd["a"], alone)
    np.testing.assert_array_equal(crowd["twin"], alone)  # the same seed on another row, at another time
    other_seed = run([(0, "a", "medium", 8)], 1)["a"]
    assert not np.array_equal(other_seed, alone)


@pytest.mark.parametrize("model,sampling", [("design", {**SAMPLED, "top_p": 0.9}), ("base", GREEDY)])
def test_prefill_at_graph_shapes_equals_the_eager_prefill(upstream: tuple[Any, Any], cases: dict[str, Case], model: str, sampling: dict[str, Any]) -> None:
    """With graphs, admission pads its prompts to a captured (prompts, positions) shape, repeating the first prompt
    into its own row to fill the count; the codes are the eager prefill's, and a prefill too large for every
    shape runs eagerly. On a CPU the padded shapes run eagerly; on a GPU they are replays."""
    names = ("short", "medium", "long", "other") if model == "design" else ("xvec", "icl", "icl-long", "xvec")
    tts = upstream[0] if model == "design" else upstream[1]
    prompts = [_prompt(tts, cases[name][1], cases[name][2], sampling) for name in names]
    # three arrive together (padded to four prompts), one later alone
    schedule = [(0 if i < 3 else 3, f"s{i}", Admission(p, 6 + i, seed=20 + i)) for i, p in enumerate(prompts)]
    eager = _drive(_batch(tts, sampling, rows=4, graphs=False), schedule)
    padded_batch = _batch(tts, sampling, rows=4, graphs=True)
    longest = max(p.length for p in prompts[:3])
    assert padded_batch.prefill_shape(3, longest) == (4, next(t for t in (32, 64, 128, 256) if t >= longest))
    padded = _drive(padded_batch, schedule)
    assert len(padded_batch._prefill_replays) == 2  # both admissions went through a padded shape
    small_batch = _batch(tts, sampling, rows=4, graphs=True, prefill_graph_positions=128)
    assert small_batch.prefill_shape(3, longest) is None  # four prompts of 64 or more: eager
    mixed = _drive(small_batch, schedule)
    for name in eager:
        np.testing.assert_array_equal(padded[name], eager[name], err_msg=f"{name}: padded vs eager prefill")
        np.testing.assert_array_equal(mixed[name], eager[name], err_msg=f"{name}: eager fallback")


PREDICTOR_ROWS = [{}, {"do_sample": True}, {"do_sample": True, "temperature": 0.8, "top_k": 10}, {"do_sample": True, "top_k": 30, "top_p": 0.7},
                  {"do_sample": True, "temperature": 1.4, "top_p": 0.95, "top_k": 30}]  # fmt: skip
"""One greedy row and four sampling ones, each with its own settings (the k of those that set one within 30)."""

PredictorArgs = tuple[torch.Tensor, torch.Tensor, Settings, torch.Tensor | None]


def _predictor_inputs(talker: Any, frames: int, seed: int) -> Iterator[PredictorArgs]:
    """Random frames' predictor inputs for ``PREDICTOR_ROWS``: each frame at batch 1, all five rows, and three."""
    rows, vocab = len(PREDICTOR_ROWS), talker.code_predictor.config.vocab_size
    settings = Settings.allocate(rows, vocab, torch.device(DEVICE))
    for row, kw in enumerate(PREDICTOR_ROWS):
        settings.assign(row, kw, vocab)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(frames):
        hidden = torch.randn(rows, 1, talker.config.hidden_size, generator=gen).to(DEVICE)
        token = torch.randint(0, talker.config.vocab_size, (rows,), generator=gen).to(DEVICE)
        noise = torch.empty(rows, talker.config.num_code_groups - 1, vocab).exponential_(generator=gen).to(DEVICE)
        for batch in (1, rows, 3):
            yield hidden[:batch], token[:batch], settings.rows(slice(0, batch)), noise[:batch]


def _assert_same_frames(reference: Any, other: Any, inputs: Iterator[PredictorArgs]) -> None:
    """The same codes, and the same summed embedding to float32 rounding."""
    with torch.inference_mode():
        for args in inputs:
            (codes, embeds), (other_codes, other_embeds) = reference(*args), other(*args)
            assert torch.equal(other_codes, codes)
            torch.testing.assert_close(other_embeds, embeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["design", "base"])
def test_folded_predictor_equals_the_eager_one(upstream: tuple[Any, Any], model: str) -> None:
    """Folding moves rounding, not arithmetic: the same codes and the same summed embedding (to float32
    rounding), for greedy and sampled rows, at batch 1 and in a batch, frame after frame."""
    talker = (upstream[0] if model == "design" else upstream[1]).model.talker
    rows = len(PREDICTOR_ROWS)
    eager, folded = CodePredictor(talker, rows, top_p=True), FoldedCodePredictor(talker, rows, top_p=True)
    _assert_same_frames(eager, folded, _predictor_inputs(talker, frames=6, seed=4))
    assert sum(t.numel() * t.element_size() for t in folded.weights()) <= folded_bytes(talker.config.to_dict(), torch.float32)


@pytest.mark.parametrize("model", ["design", "base"])
def test_compiled_predictor_equals_the_folded_one(upstream: tuple[Any, Any], model: str) -> None:
    """One traced codebook step, replayed for codebooks 0..13 (its position a device tensor, attention over all 16
    positions with the later ones masked), computes what the folded loop computes: the same codes and the same
    summed embedding, for greedy and sampled rows, at batch 1 and in batches of two other sizes."""
    talker = (upstream[0] if model == "design" else upstream[1]).model.talker
    rows = len(PREDICTOR_ROWS)
    folded, compiled = FoldedCodePredictor(talker, rows, top_p=True, top_k=30), CompiledCodePredictor(talker, rows, top_p=True, top_k=30)
    inputs = list(_predictor_inputs(talker, frames=3, seed=5))
    greedy = [(*args[:3], None) for args in inputs if args[0].shape[0] == 1]  # no row draws: the other trace of each step
    _assert_same_frames(folded, compiled, iter(inputs + greedy))
    assert compiled.tables[3].data_ptr() == compiled.table_stack[3].data_ptr()  # the stacked tables are not a second copy


def _transformers_choice(scores: torch.Tensor, seen: list[int], sampled: int, kw: dict[str, Any], noise: torch.Tensor) -> tuple[torch.Tensor, int]:
    """transformers' processors on one row, then multinomial as ATen draws it (argmax of p / noise)."""
    procs = LogitsProcessorList()
    if kw["repetition_penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(kw["repetition_penalty"]))
    procs.append(MinNewTokensLengthLogitsProcessor(0, kw["min_new_tokens"], kw["eos_token_id"]))
    procs.append(SuppressTokensLogitsProcessor(kw["suppress_tokens"]))
    ids = torch.tensor([seen], dtype=torch.long)[:, :sampled]
    processed = procs(ids, scores[None].clone())
    if not kw["do_sample"]:
        return processed[0], int(processed.argmax())
    warpers = LogitsProcessorList([TemperatureLogitsWarper(kw["temperature"]), TopKLogitsWarper(kw["top_k"])])
    if kw["top_p"] < 1.0:
        warpers.append(TopPLogitsWarper(kw["top_p"]))
    warped = warpers(ids, processed)
    return warped[0], int((warped.softmax(-1)[0] / noise).argmax())


def test_no_collection_while_a_graph_is_captured() -> None:
    """``graphs.no_collection`` holds the cycle collector off for a capture and gives back the state it found."""
    from server.engines.qwen.graphs import no_collection

    assert gc.isenabled()
    with no_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_collection():
        raise RuntimeError("a capture failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with no_collection():
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_batched_sampler_equals_transformers_per_row() -> None:
    vocab, rows = 3072, 6
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, vocab, generator=gen) * 4
    noise = torch.empty(rows, vocab).exponential_(generator=gen)
    settings, penalties = Settings.allocate(rows, vocab, torch.device("cpu")), Penalties.allocate(rows, vocab, torch.device("cpu"))
    seen = torch.zeros(rows, vocab, dtype=torch.bool)
    history = [torch.randint(0, vocab, (5,), generator=gen).tolist() for _ in range(rows)]
    sampled = torch.tensor([[0], [1], [2], [5], [5], [3]])
    configs = [
        {"do_sample": False, "repetition_penalty": 1.05},
        {"do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.05},
        {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.3},
        {"do_sample": True, "temperature": 1.3, "top_k": 3000, "top_p": 0.5, "repetition_penalty": 1.0},
        {"do_sample": False, "repetition_penalty": 1.5},
        {"do_sample": True, "temperature": 1.0, "top_k": 1, "top_p": 0.95, "repetition_penalty": 1.05},
    ]
    eos = 2150
    for row, config in enumerate(configs):
        kw = {"temperature": 1.0, "top_k": vocab, "top_p": 1.0, "min_new_tokens": 2, "eos_token_id": eos, **config}
        kw["suppress_tokens"] = [i for i in range(vocab - 1024, vocab) if i != eos]
        configs[row] = kw
        settings.assign(row, kw, vocab)
        penalties.assign(row, kw)
        seen[row, history[row][: int(sampled[row])]] = True
    logits[:, eos] = logits.max() + 1  # EOS wins wherever it is allowed
    scores = penalize(logits, seen, sampled, penalties)
    tokens = choose(scores, settings, noise, top_p=True)
    warped = warp(scores, settings, top_p=True)
    for row, kw in enumerate(configs):
        expected_scores, expected_token = _transformers_choice(logits[row], history[row], int(sampled[row]), kw, noise[row])
        ours = warped[row] if kw["do_sample"] else scores[row]
        assert torch.equal(ours, expected_scores), row
        assert int(tokens[row]) == expected_token, row
    assert int(tokens[0]) != eos and int(tokens[4]) == eos  # banned below min_new_tokens, then allowed
    # A batch whose plan bounds top-k finds each row's k-th score with a topk of that size: the same scores.
    bound = max(int(k) for k in settings.top_k)
    assert torch.equal(warp(scores, settings, top_p=True, top_k=bound), warped)
    assert torch.equal(choose(scores, settings, noise, top_p=True, top_k=bound), tokens)


def test_sampling_plan_bounds_top_k_by_what_its_rows_ask() -> None:
    plan = SamplingPlan.from_kwargs({"do_sample": True, "top_k": 50, "subtalker_dosample": True, "subtalker_top_k": 50})
    assert (plan.talker_top_k, plan.predictor_top_k) == (50, 50)
    assert plan.covers({"do_sample": True, "top_k": 20, "subtalker_dosample": True, "subtalker_top_k": 50})
    assert plan.covers({"do_sample": False, "top_k": 500, "subtalker_dosample": False})  # greedy rows never warp
    assert not plan.covers({"do_sample": True, "top_k": 51, "subtalker_dosample": True, "subtalker_top_k": 50})
    assert not plan.covers({"do_sample": True, "top_k": 0, "subtalker_dosample": True, "subtalker_top_k": 50})  # k off: the whole vocabulary
    unbounded = SamplingPlan.from_kwargs({"do_sample": True, "top_k": 0, "subtalker_dosample": True})
    assert unbounded.covers({"do_sample": True, "top_k": 3000, "subtalker_dosample": True, "subtalker_top_k": 7})


def test_counter_noise_is_exponential_independent_and_samples_the_distribution() -> None:
    noise = CounterNoise(3072, torch.device("cpu"))
    seeds = torch.arange(64, dtype=torch.long) * 1_000_003 + (1 << 40)
    draws = noise.draw(seeds, torch.arange(16).repeat(64, 1), 3072).double().numpy()  # (64, 16, 3072)
    flat = np.sort(draws.ravel())
    ecdf = np.arange(1, flat.size + 1) / flat.size
    assert np.abs(ecdf - (1 - np.exp(-flat))).max() < 2e-3  # Kolmogorov-Smirnov against Exp(1)
    assert abs(flat.mean() - 1) < 5e-3 and flat.min() > 0
    rows, lanes, counters = draws[:, 0, :].ravel(), draws[:, 0, :].T.ravel(), draws[0].ravel()
    for series in (rows, lanes, counters):  # neighbours along any axis are uncorrelated
        assert abs(np.corrcoef(series[:-1], series[1:])[0, 1]) < 0.02
    again = noise.draw(seeds, torch.arange(16).repeat(64, 1), 3072).double().numpy()
    np.testing.assert_array_equal(draws, again)
    # The exponential race over these draws picks each category in proportion to its probability.
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005])
    race = noise.draw(torch.arange(20000, dtype=torch.long), torch.zeros(20000, 1, dtype=torch.long), 8)[:, 0]
    counts = np.bincount((probs / race).argmax(-1).numpy(), minlength=8)
    expected = probs.numpy() * 20000
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001


def test_rows_are_reused_compacted_and_checked(cases: dict[str, Case]) -> None:
    design, method, kw = cases["short"]
    prompt = _prompt(design, method, kw, GREEDY)
    batch = _batch(design, GREEDY, rows=8)
    planned = row_bytes(design.model.config.talker_config.to_dict(), torch.float32, batch.max_len, batch.max_text)
    assert batch.bytes() <= 8 * planned  # the memory plan never counts less than a batch takes
    assert batch.step().shape == (0, 17)
    rows, _ = batch.admit([Admission(prompt, 50) for _ in range(5)])
    assert rows == [0, 1, 2, 3, 4] and batch.free_rows == 3
    batch.release(2)
    assert batch.admit([Admission(prompt, 50)])[0] == [2]  # a freed row is reused at once
    for row in (0, 1, 2):
        batch.release(row)
    assert batch.step().shape == (8, 17)  # rows 3 and 4 need the bucket of 8
    assert batch.compact() == [(4, 0), (3, 1)]  # two rows fit the bucket of 2: the top rows move down
    assert batch.active_rows() == [0, 1] and batch.compact() == []
    assert batch.step().shape == (2, 17)
    too_long = Prompt(torch.zeros(1, 255, prompt.inputs_embeds.shape[2]), prompt.attention_mask, prompt.trailing_text_hidden,
                      prompt.tts_pad_embed, prompt.talker_kwargs)  # fmt: skip
    with pytest.raises(EngineError, match="positions"):
        batch.admit([Admission(too_long, 10)])
    sampled = Prompt(prompt.inputs_embeds, prompt.attention_mask, prompt.trailing_text_hidden, prompt.tts_pad_embed,
                     {**prompt.talker_kwargs, "do_sample": True})  # fmt: skip
    with pytest.raises(EngineError, match="sampling"):
        batch.admit([Admission(sampled, 10)])
    assert batch.in_use == 2 and batch.free_rows == 6


def test_memory_plan() -> None:
    gib = 1 << 30
    config = {"num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 2048,
              "vocab_size": 3072, "num_code_groups": 16,
              "code_predictor_config": {"num_hidden_layers": 5, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                                        "vocab_size": 2048}}  # fmt: skip
    per_row = row_bytes(config, torch.bfloat16, 2048, 512)
    kv = 28 * 2 * 8 * 2048 * 128 * 2
    assert kv == 234_881_024 and kv < per_row < kv + 20 * (1 << 20)  # the talker's keys and values dominate a row
    weights, rows = {"design": 4 * gib, "base": 4 * gib}, {"design": per_row, "base": per_row}
    assert plan_memory(weights, rows, None, reserve=0, max_rows=64) == ("both", {"design": 64, "base": 64})
    assert plan_memory(weights, rows, 80 * gib, reserve=3 * gib, max_rows=64) == ("both", {"design": 64, "base": 64})
    mode, shared = plan_memory(weights, rows, 20 * gib, reserve=3 * gib, max_rows=64)
    assert mode == "both" and shared["design"] == shared["base"] == (6 * gib) // (2 * per_row)  # 3 GiB set aside for each model
    mode, alone = plan_memory(weights, rows, 9 * gib, reserve=3 * gib, max_rows=64)
    assert mode == "one" and alone == {"design": (2 * gib) // per_row, "base": (2 * gib) // per_row}
    with pytest.raises(EngineError, match="not enough memory"):
        plan_memory(weights, rows, 7 * gib, reserve=3 * gib, max_rows=64)
