"""QwenEngine on tiny random-weight models of the real architecture (CPU, offline).

The engine's own threads, scheduler, batch and codec, against upstream's one-shot calls.
The decode batch itself (rows, parity, sampling) is tested in ``test_qwen_batch.py``.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from server.engines.base import SAMPLE_RATE, Reference, SynthesisRequest, Voice  # noqa: E402
from server.engines.qwen import compat, qwen_weights_available  # noqa: E402
from server.engines.qwen.engine import QwenEngine  # noqa: E402
from server.engines.qwen.runtime import ModelRuntime  # noqa: E402
from server.errors import EngineError  # noqa: E402
from server.speech import LeadInTrim, Utterance, speak_audio  # noqa: E402
from server.text import split_sentences  # noqa: E402
from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models  # the session fixture (conftest may import it too)

FRAME = 1920
GREEDY = {"do_sample": False, "subtalker_dosample": False}
SAMPLED = {"do_sample": True, "subtalker_dosample": True}
FRAMES = 16  # tiny random models never say EOS: every stream runs to the cap
# CI runs these on CPU; on a GPU machine, MINESTREAM_QWEN_DEVICE=cuda:0 runs the same checks with
# the step graphs captured (float32, so upstream's codes are still reproducible bit for bit).
DEVICE = os.environ.get("MINESTREAM_QWEN_DEVICE", "cpu")
torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions alone differ from upstream by ~1e-3


def _ref_audio(seconds: float = 1.6, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.RandomState(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.randn(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def upstream(qwen_tiny_models: tuple[Path, Path]) -> tuple[Any, Any]:
    qwen_tts = compat.import_qwen_tts()
    design, base = qwen_tiny_models
    load = qwen_tts.Qwen3TTSModel.from_pretrained
    where = {} if DEVICE == "cpu" else {"device_map": DEVICE}
    return load(str(design), dtype=torch.float32, **where), load(str(base), dtype=torch.float32, **where)


def run_engine(models: tuple[Path, Path], body: Callable[[QwenEngine], Awaitable[Any]], **kwargs: Any) -> Any:
    kwargs.setdefault("generation", {**GREEDY, "max_new_tokens": FRAMES + 1})

    async def main() -> Any:
        engine = QwenEngine(str(models[0]), str(models[1]), device=DEVICE, dtype="float32", **kwargs)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


async def collect(engine: QwenEngine, request: SynthesisRequest) -> list[np.ndarray]:
    return [chunk async for chunk in engine.synthesize(request)]


def test_tiny_models_load_and_speak_through_upstream(upstream: tuple[Any, Any]) -> None:
    design, base = upstream
    assert design.model.tts_model_type == "voice_design" and base.model.tts_model_type == "base"
    assert design.model.config.talker_config.num_code_groups == 16
    assert design.model.config.talker_config.vocab_size == 3072
    assert len(design.processor.tokenizer("<|im_start|>assistant\n")["input_ids"]) == 3
    n = 6
    wavs, sr = design.generate_voice_design("Hello world.", instruct="calm", language="English", max_new_tokens=n + 1)
    assert sr == SAMPLE_RATE and wavs[0].shape == (n * FRAME,)
    wavs, _ = base.generate_voice_clone("Hello.", ref_audio=(_ref_audio(), SAMPLE_RATE), x_vector_only_mode=True, max_new_tokens=n + 1)
    assert wavs[0].shape == (n * FRAME,)
    wavs, _ = base.generate_voice_clone("Hello.", ref_audio=(_ref_audio(), SAMPLE_RATE), ref_text="The fox.", max_new_tokens=n + 1)
    assert wavs[0].shape == (n * FRAME,)


# (text, voice) per case; the clone references are the same audio, with and without its text.
CASES = {
    "design": ("Hello world. How are you?", Voice(design="a calm low voice")),
    "design-2": ("The quick brown fox jumps.", Voice(design="a bright young voice")),
    "design-3": ("One more sentence, with a comma.", Voice(design="an old man")),
    "xvec": ("Hello world.", Voice(reference=Reference(_ref_audio(), key="ref-x"))),
    "icl": ("Hello world.", Voice(reference=Reference(_ref_audio(), text="The quick fox.", key="ref-i"))),
}


def _upstream_audio(upstream: tuple[Any, Any], case: str, frames: int, sampling: dict[str, Any]) -> np.ndarray:
    """Upstream's one-shot generate_* for a case: its talker loop, then one decode of all its codes."""
    text, voice = CASES[case]
    kw: dict[str, Any] = {"max_new_tokens": frames + 1, **sampling}
    if voice.reference is None:
        wavs, _ = upstream[0].generate_voice_design(text, instruct=voice.design, language="English", **kw)
    else:
        ref = voice.reference
        wavs, _ = upstream[1].generate_voice_clone(
            text, language="English", ref_audio=(ref.audio, SAMPLE_RATE), ref_text=ref.text, x_vector_only_mode=ref.text is None, **kw
        )
    return np.asarray(wavs[0])


@pytest.mark.parametrize(
    "case,sampling",
    [("design", GREEDY), ("design", SAMPLED), ("xvec", SAMPLED), ("icl", GREEDY), ("icl", SAMPLED)],
)
def test_streamed_audio_equals_upstream(qwen_tiny_models, upstream: tuple[Any, Any], case: str, sampling: dict) -> None:
    """Prompt, batch, chunked codec and the scheduler's thread against upstream's one-shot call.

    Sampled cases draw from torch's default generator in upstream's order (``noise="generator"``),
    so the same seed gives upstream's codes; audio within 1e-4 means every code is equal and
    every chunk seam is exact.
    """
    text, voice = CASES[case]
    frames = 12

    async def body(engine: QwenEngine) -> list[np.ndarray]:
        torch.manual_seed(11)
        return await collect(engine, SynthesisRequest(text, voice, language="en"))

    chunks = run_engine(qwen_tiny_models, body, generation={**sampling, "max_new_tokens": frames + 1}, noise="generator")
    torch.manual_seed(11)
    expected = _upstream_audio(upstream, case, frames, sampling)
    assert [len(c) // FRAME for c in chunks] == [2, 4, 6]
    assert expected.shape == (frames * FRAME,)
    np.testing.assert_allclose(np.concatenate(chunks), expected, atol=1e-4)


def test_chunks_grow_from_a_small_first_one(qwen_tiny_models) -> None:
    text, voice = CASES["design"]

    async def body(engine: QwenEngine) -> tuple[list[np.ndarray], list[np.ndarray]]:
        first = await collect(engine, SynthesisRequest(text, voice, language="en"))
        later = await collect(engine, SynthesisRequest(text, voice, language="en", first=False))
        return first, later

    first, later = run_engine(qwen_tiny_models, body)
    assert [len(c) // FRAME for c in first] == [2, 4, 8, 2]  # a small first chunk, doubling up to 12
    assert [len(c) // FRAME for c in later] == [12, 4]
    np.testing.assert_allclose(np.concatenate(first), np.concatenate(later), atol=1e-4)


def test_concurrent_design_and_clone_streams_equal_their_solo_runs(qwen_tiny_models) -> None:
    """A mixed load: three designed voices and two clones at once, each model's streams in one batch.

    Solo runs equal upstream (``test_streamed_audio_equals_upstream``, and the batch tests)."""
    requests = {case: SynthesisRequest(text, voice, language="en") for case, (text, voice) in CASES.items()}

    async def body(engine: QwenEngine) -> tuple[dict, dict, dict, dict]:
        solo = {case: np.concatenate(await collect(engine, r)) for case, r in requests.items()}
        before = engine.health()["rows"]
        together = await asyncio.gather(*(collect(engine, r) for r in requests.values()))
        return solo, dict(zip(requests, together, strict=True)), before, engine.health()

    solo, together, before, after = run_engine(qwen_tiny_models, body)
    for case in CASES:
        mixed = np.concatenate(together[case])
        assert mixed.shape == (FRAMES * FRAME,)
        np.testing.assert_allclose(mixed, solo[case], atol=1e-4, err_msg=case)
    steps = {kind: after["rows"][kind]["steps"] - before[kind]["steps"] for kind in ("design", "base")}
    # a model's streams share steps: fewer than one step per frame per stream (they joined over a round or two)
    assert steps["design"] < 3 * FRAMES and steps["base"] < 2 * FRAMES
    assert all(r["rows_in_use"] == 0 for r in after["rows"].values())
    assert after["active_streams"] == 0 and after["queue_depth"] == 0


def test_a_full_batch_queues_streams_and_serves_them_as_rows_free(qwen_tiny_models) -> None:
    texts = ["Hello world.", "A second stream.", "The third one.", "Four streams now.", "And a fifth."]
    requests = [SynthesisRequest(t, Voice(design="calm"), owner=f"session-{i}") for i, t in enumerate(texts)]

    async def body(engine: QwenEngine) -> tuple[list, list, int, int]:
        solo = [np.concatenate(await collect(engine, r)) for r in requests]
        seen_rows, seen_queue = 0, 0
        task = asyncio.gather(*(collect(engine, r) for r in requests))
        while not task.done():
            health = engine.health()
            seen_rows = max(seen_rows, health["rows"]["design"]["rows_in_use"])
            seen_queue = max(seen_queue, health["queue_depth"])
            await asyncio.sleep(0.01)
        return solo, [np.concatenate(c) for c in await task], seen_rows, seen_queue

    solo, together, seen_rows, seen_queue = run_engine(qwen_tiny_models, body, rows=2)
    assert seen_rows == 2 and seen_queue >= 1
    for alone, mixed in zip(solo, together, strict=True):
        np.testing.assert_allclose(mixed, alone, atol=1e-4)


def test_cancel_stops_within_one_step(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> tuple[int, dict]:
        stream = engine.synthesize(SynthesisRequest("Hello world.", Voice(design="calm")))
        await stream.__anext__()
        await stream.aclose()
        cancelled_at = engine.health()["rows"]["design"]["steps"]
        await asyncio.sleep(0.3)
        health = engine.health()
        return health["rows"]["design"]["steps"] - cancelled_at, health

    kw = {"generation": {**GREEDY, "max_new_tokens": 2000}, "max_frames": 1000}
    extra, health = run_engine(qwen_tiny_models, body, **kw)
    assert extra <= 1
    assert health["active_streams"] == 0 and health["queue_depth"] == 0
    assert all(r["rows_in_use"] == 0 for r in health["rows"].values())


def test_disconnect_frees_the_row(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> tuple[dict, int]:
        async def consume() -> None:
            async for _ in engine.synthesize(SynthesisRequest("Hello world.", Voice(design="calm"))):
                pass

        task = asyncio.create_task(consume())
        while engine.health()["active_streams"] == 0:  # noqa: ASYNC110 - polling the engine's own state
            await asyncio.sleep(0.01)
        task.cancel()  # what a dropped websocket does to the session's task
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        health = engine.health()
        after = await collect(engine, SynthesisRequest("Next.", Voice(design="calm")))
        return health, sum(len(c) for c in after)

    kw = {"generation": {**GREEDY, "max_new_tokens": 2000}, "max_frames": 1000, "rows": 1}
    health, samples = run_engine(qwen_tiny_models, body, **kw)
    assert health["active_streams"] == 0 and health["rows"]["design"]["rows_in_use"] == 0
    assert samples == (40 + 5 * len("Next.")) * FRAME  # the only row served the next stream


def test_a_prompt_too_long_for_a_row_fails_clearly_and_harms_nothing(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> tuple[str, int]:
        long = engine.synthesize(SynthesisRequest("A sentence that is far too long for a row of sixty-four. " * 3, Voice(design="calm")))
        short = asyncio.ensure_future(collect(engine, SynthesisRequest("Hi.", Voice(design="calm"))))
        with pytest.raises(EngineError) as failed:
            await long.__anext__()
        return str(failed.value), sum(len(c) for c in await short)

    message, samples = run_engine(qwen_tiny_models, body, max_len=64)
    assert "positions" in message and samples == FRAMES * FRAME


def test_clone_prompt_cached_in_memory_and_on_disk(qwen_tiny_models, tmp_path, monkeypatch) -> None:
    ref = Reference(_ref_audio(), text="The fox.", key="voice-1")
    xref = Reference(_ref_audio(seed=3), key="voice-2")

    async def body(engine: QwenEngine) -> list[np.ndarray]:
        return [np.concatenate(await collect(engine, SynthesisRequest("Hi.", Voice(reference=r)))) for r in (ref, xref)]

    first = run_engine(qwen_tiny_models, body, cache_dir=tmp_path)
    assert sorted(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("qwen3tts-*.pt")) == ["icl.pt", "xvec.pt"]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the prompt should come from the disk cache")

    qwen_tts = compat.import_qwen_tts()
    monkeypatch.setattr(qwen_tts.Qwen3TTSModel, "create_voice_clone_prompt", refuse)
    second = run_engine(qwen_tiny_models, body, cache_dir=tmp_path)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_designed_voice_continues_with_base_clone(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> tuple[Voice, Reference | None, int]:
        voice = Voice(design="warm narrator", voice_id="v1")
        audio = np.concatenate(await collect(engine, SynthesisRequest("First sentence.", voice)))
        nxt = engine.continuation(voice, "First sentence.", audio)
        more = await collect(engine, SynthesisRequest("Second sentence.", nxt, first=False))
        rendered = await engine.render_design("warm narrator", "en")
        return nxt, rendered, sum(len(c) for c in more)

    nxt, rendered, samples = run_engine(qwen_tiny_models, body)
    assert nxt.design == "warm narrator" and nxt.voice_id == "v1"
    assert nxt.reference is not None and nxt.reference.text == "First sentence."
    assert samples == FRAMES * FRAME
    assert rendered is not None and rendered.text and rendered.audio.shape == (FRAMES * FRAME,)


def test_one_model_mode_swaps_on_demand(qwen_tiny_models) -> None:
    from server.engines.qwen.manager import estimate_bytes, folded_bytes, talker_config

    need = max(estimate_bytes(str(p), torch.float32) + folded_bytes(talker_config(str(p)), torch.float32) for p in qwen_tiny_models)

    async def body(engine: QwenEngine) -> list[dict]:
        seen = [engine.health()]
        clone = Voice(reference=Reference(_ref_audio(), key="r"))
        design = Voice(design="calm")
        for voice in (design, clone, design):  # each one needs the model that is not resident
            assert sum(len(c) for c in await collect(engine, SynthesisRequest("One.", voice))) == FRAMES * FRAME
            seen.append(engine.health())
            gc.collect()  # the unloaded model is gone, not held by its idle scheduler thread
            assert sum(isinstance(o, ModelRuntime) for o in gc.get_objects()) == 1
        outs = await asyncio.gather(*(collect(engine, SynthesisRequest("Two.", v)) for v in (design, clone, design)))
        assert all(sum(len(c) for c in out) == FRAMES * FRAME for out in outs)
        seen.append(engine.health())
        return seen

    seen = run_engine(qwen_tiny_models, body, memory_budget_bytes=need + need // 2)
    assert seen[0]["memory_mode"] == "one" and seen[0]["resident"] == ["base"]
    assert [h["resident"] for h in seen[1:4]] == [["design"], ["base"], ["design"]]
    assert [h["swaps"] for h in seen[1:4]] == [1, 2, 3] and seen[3]["last_swap_s"] > 0
    # Mixed concurrent requests take turns: a swap or two more, not a swap storm.
    assert len(seen[4]["resident"]) == 1 and 3 <= seen[4]["swaps"] <= 5


def test_both_models_resident_when_they_fit(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> dict:
        return engine.health()

    health = run_engine(qwen_tiny_models, body, memory_budget_bytes=1 << 34)
    assert health["memory_mode"] == "both" and health["resident"] == ["design", "base"]
    assert {k: r["rows_total"] for k, r in health["rows"].items()} == {"design": 64, "base": 64}


def test_runtimes_are_made_at_start_not_in_the_first_request(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> dict:
        return engine.health()["rows"]

    rows = run_engine(qwen_tiny_models, body, rows=8, memory_budget_bytes=1 << 34)
    graphs = 0 if DEVICE == "cpu" else 4 * 4  # batch buckets 1..8 by key buckets 256..2048
    assert {k: {**r, "codec": "?"} for k, r in rows.items()} == {
        k: {"rows_in_use": 0, "rows_total": 8, "max_len": 2048, "graphs": graphs, "steps": 0, "codec": "?", "predictor": "FoldedCodePredictor", "talker": "modules",
            "codec_graphs": 0 if DEVICE == "cpu" else 4 * 4}  # batch buckets 1..8 by chunk lengths 2, 4, 8, 12
        for k in ("design", "base")
    }


def test_long_text_is_split_by_the_speech_layer_and_capped(qwen_tiny_models) -> None:
    text = "First sentence is here. Second one follows! Third, with a comma, ends? " * 3
    expected = split_sentences(text, 120)  # one request per sentence, each at most segment_chars

    async def body(engine: QwenEngine) -> tuple[int, int]:
        assert engine.info.segment_chars == 120
        utterance = Utterance("u", Voice(design="calm"))
        utterance.add_text(text)
        utterance.end()
        samples = sum([len(c) async for c in speak_audio(engine, utterance)])
        return samples, len(engine.recent_jobs)

    samples, jobs = run_engine(qwen_tiny_models, body, max_chars=120, generation={**GREEDY, "max_new_tokens": 6})
    assert jobs == len(expected) > 1
    # Each piece is capped at 5 frames; the lead-in trim may take a little off the first.
    assert len(expected) * 5 * FRAME - LeadInTrim.MAX_DROP <= samples <= len(expected) * 5 * FRAME


def test_import_shim_fails_loudly_only_on_the_25hz_path() -> None:
    compat.install()
    compat.import_qwen_tts()
    import sys

    kaldi = sys.modules.get("torchaudio.compliance.kaldi")
    if not isinstance(kaldi, compat._Unavailable):
        pytest.skip("torchaudio imports here; nothing is shimmed")
    with pytest.raises(compat.MissingDependency, match="25 Hz"):
        _ = kaldi.fbank


def test_weights_available_is_offline(qwen_tiny_models, tmp_path) -> None:
    design, base = qwen_tiny_models
    assert qwen_weights_available(str(design), str(base))
    assert not qwen_weights_available(str(tmp_path), str(base))
    assert not qwen_weights_available("Nobody/not-a-cached-model", str(base))
