"""QwenEngine on tiny random-weight models of the real architecture (CPU, offline)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from server.engines.base import SAMPLE_RATE, Reference, SynthesisRequest, Voice  # noqa: E402
from server.engines.qwen import compat, qwen_weights_available  # noqa: E402
from server.engines.qwen.engine import QwenEngine, split_long  # noqa: E402
from server.engines.qwen.graphs import StaticTalker  # noqa: E402
from server.engines.qwen.stream import CodecStream, StreamState, Talker, capture_prompt  # noqa: E402
from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models  # the session fixture (conftest may import it too)

FRAME = 1920
GREEDY = {"do_sample": False, "subtalker_dosample": False}
SAMPLED = {"do_sample": True, "subtalker_dosample": True}
FRAMES = 16  # tiny random models never say EOS: every stream runs to the cap
# CI runs these on CPU; on a GPU machine, MINESTREAM_QWEN_DEVICE=cuda:0 runs the same checks with
# the CUDA graphs captured (float32, so upstream's codes are still reproducible bit for bit).
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


def _streamed(tts: Any, method: str, chunk: int, talker: Talker, **kwargs: Any) -> tuple[torch.Tensor, np.ndarray]:
    """The engine's decode path (prefill, steps, incremental codec) without threads."""
    prompt = capture_prompt(tts, method, **kwargs)
    state = StreamState(prompt, max_frames=kwargs["max_new_tokens"] - 1)
    codec = CodecStream(tts, prompt.ref_code)
    talker.prefill(state)
    audio = []
    while not state.done:
        before = len(state.frames)
        talker.step([state])
        codec.push(state.frames[before:])
        if codec.pending >= chunk:
            audio.append(codec.flush())
    audio.append(codec.flush())
    talker.release(state)
    return torch.stack(state.frames), np.concatenate(audio)


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


@pytest.mark.parametrize("decode", ["plain", "static"])
@pytest.mark.parametrize(
    "case,sampling",
    [("design", GREEDY), ("design", SAMPLED), ("xvec", SAMPLED), ("icl", GREEDY), ("icl", SAMPLED)],
)
def test_streamed_codes_and_audio_match_upstream(upstream: tuple[Any, Any], case: str, sampling: dict, decode: str) -> None:
    """Both talkers; the static one runs the functions a GPU captures as CUDA graphs, eagerly."""
    design, base = upstream
    kw: dict[str, Any] = {"max_new_tokens": 13, **sampling}
    if case == "design":
        tts, method = design, "generate_voice_design"
        kw.update(text="Hello world. How are you?", instruct="a calm low voice", language="English")
        ids = design._tokenize_texts([design._build_assistant_text(kw["text"])])
        extra = {"instruct_ids": [design._tokenize_texts([design._build_instruct_text(kw["instruct"])])[0]]}
        upstream_gen = dict(input_ids=ids, languages=["English"], non_streaming_mode=True, **extra)
    else:
        tts, method = base, "generate_voice_clone"
        text = "The quick fox." if case == "icl" else None
        items = base.create_voice_clone_prompt(ref_audio=(_ref_audio(), SAMPLE_RATE), ref_text=text, x_vector_only_mode=text is None)
        kw.update(text="Hello world.", language="Auto", voice_clone_prompt=items)
        ref_ids = [base._tokenize_texts([base._build_ref_text(text)])[0] if text else None]
        upstream_gen = dict(
            input_ids=base._tokenize_texts([base._build_assistant_text(kw["text"])]),
            ref_ids=ref_ids,
            voice_clone_prompt=base._prompt_items_to_voice_clone_prompt(items),
            languages=["Auto"],
            non_streaming_mode=False,
        )
    torch.manual_seed(11)
    talker = Talker(tts) if decode == "plain" else StaticTalker(tts, graphs=False, max_len=256)
    codes, audio = _streamed(tts, method, 4, talker, **kw)
    torch.manual_seed(11)
    expected_codes, _ = tts.model.generate(**upstream_gen, **tts._merge_generate_kwargs(**sampling, max_new_tokens=13))
    torch.manual_seed(11)
    expected_wavs, _ = getattr(tts, method)(**kw)
    assert torch.equal(codes, expected_codes[0])
    assert audio.shape == expected_wavs[0].shape == (12 * FRAME,)
    np.testing.assert_allclose(audio, expected_wavs[0], atol=1e-4)


def test_stream_without_a_slot_falls_back_to_plain_decoding(upstream: tuple[Any, Any]) -> None:
    """A slot too big to allocate (as when GPU memory runs out) costs speed, not the stream."""
    design, _ = upstream
    kw: dict[str, Any] = {"max_new_tokens": 9, **GREEDY, "text": "Hello.", "instruct": "calm", "language": "English"}
    talker = StaticTalker(design, graphs=False, max_len=1 << 42)
    codes, audio = _streamed(design, "generate_voice_design", 4, talker, **kw)
    expected, _ = _streamed(design, "generate_voice_design", 4, Talker(design), **kw)
    assert talker.slots == [] and torch.equal(codes, expected) and audio.shape == (8 * FRAME,)


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_engine_stream_equals_upstream_and_chunks_grow(qwen_tiny_models, upstream, decode: str) -> None:
    design, base = upstream
    text, description = "Hello world.", "a bright voice"

    async def body(engine: QwenEngine) -> tuple[list[np.ndarray], list[np.ndarray]]:
        first = await collect(engine, SynthesisRequest(text, Voice(design=description), language="en"))
        later = await collect(engine, SynthesisRequest(text, Voice(design=description), language="en", first=False))
        return first, later

    first, later = run_engine(qwen_tiny_models, body, decode=decode)
    assert [len(c) // FRAME for c in first] == [2, 4, 8, 2]  # a small first chunk, doubling up to 12
    assert [len(c) // FRAME for c in later] == [12, 4]
    wavs, _ = design.generate_voice_design(text, instruct=description, language="English", max_new_tokens=FRAMES + 1, **GREEDY)
    np.testing.assert_allclose(np.concatenate(first), wavs[0], atol=1e-4)
    np.testing.assert_allclose(np.concatenate(later), wavs[0], atol=1e-4)


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_concurrent_streams_interleave_without_crosstalk(qwen_tiny_models, decode: str) -> None:
    requests = [
        SynthesisRequest("Hello world.", Voice(design="calm")),
        SynthesisRequest("A different sentence here.", Voice(design="excited")),
        SynthesisRequest("Cloned speech.", Voice(reference=Reference(_ref_audio(), text="The fox."))),
    ]

    async def body(engine: QwenEngine) -> tuple[list, list, dict]:
        solo = [np.concatenate(await collect(engine, r)) for r in requests]
        together = await asyncio.gather(*(collect(engine, r) for r in requests))
        return solo, [np.concatenate(c) for c in together], engine.health()

    solo, together, health = run_engine(qwen_tiny_models, body, decode=decode)
    for alone, mixed in zip(solo, together, strict=True):
        assert mixed.shape == (FRAMES * FRAME,)
        np.testing.assert_allclose(mixed, alone, atol=1e-4)
    if decode == "static":  # two design streams at once took two slots; every slot came back
        slots = health["static_slots"]
        assert slots["design"]["made"] == 2 and slots["base"]["made"] == 1
        assert slots["design"]["in_use"] == slots["base"]["in_use"] == 0
    else:
        assert health["static_slots"] == {}


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_cancel_stops_within_one_step(qwen_tiny_models, monkeypatch, decode: str) -> None:
    steps: list[float] = []
    original = Talker.step

    def counting(self: Talker, states: list) -> None:
        steps.append(time.monotonic())
        original(self, states)

    monkeypatch.setattr(Talker, "step", counting)

    async def body(engine: QwenEngine) -> tuple[int, dict]:
        stream = engine.synthesize(SynthesisRequest("Hello world.", Voice(design="calm")))
        await stream.__anext__()
        await stream.aclose()
        cancelled_at = len(steps)
        await asyncio.sleep(0.3)
        return len(steps) - cancelled_at, engine.health()

    kw = {"generation": {**GREEDY, "max_new_tokens": 2000}, "max_frames": 1000, "decode": decode}
    extra, health = run_engine(qwen_tiny_models, body, **kw)
    assert extra <= 1
    assert health["active_streams"] == 0 and health["queue_depth"] == 0
    assert all(s["in_use"] == 0 for s in health["static_slots"].values())


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_disconnect_frees_the_stream(qwen_tiny_models, decode: str) -> None:
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

    kw = {"generation": {**GREEDY, "max_new_tokens": 2000}, "max_frames": 1000, "decode": decode}
    health, samples = run_engine(qwen_tiny_models, body, **kw)
    assert health["active_streams"] == 0
    assert all(s["in_use"] == 0 for s in health["static_slots"].values())
    assert samples == (40 + 5 * len("Next.")) * FRAME


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
    from server.engines.qwen.manager import estimate_bytes

    need = max(estimate_bytes(str(p), torch.float32) for p in qwen_tiny_models)

    async def body(engine: QwenEngine) -> list[dict]:
        seen = [engine.health()]
        clone = Voice(reference=Reference(_ref_audio(), key="r"))
        design = Voice(design="calm")
        for voice in (design, clone, design):  # each one needs the model that is not resident
            assert sum(len(c) for c in await collect(engine, SynthesisRequest("One.", voice))) == FRAMES * FRAME
            seen.append(engine.health())
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


def test_static_talkers_are_made_at_start_not_in_the_first_request(qwen_tiny_models) -> None:
    async def body(engine: QwenEngine) -> dict:
        deadline = time.monotonic() + 20
        while len(engine.health()["static_slots"]) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the scheduler threads make them; poll their state
        return engine.health()["static_slots"]

    slots = run_engine(qwen_tiny_models, body, decode="static", memory_budget_bytes=1 << 34)
    assert slots == {k: {"made": 1, "in_use": 0, "positions": 2048} for k in ("design", "base")}


def test_long_text_is_split_and_capped(qwen_tiny_models) -> None:
    text = "First sentence is here. Second one follows! Third, with a comma, ends? " * 3
    pieces = split_long(text, 60)
    assert all(len(p) <= 60 for p in pieces) and len(pieces) > 2
    assert " ".join(pieces).split() == text.split()
    assert split_long("x" * 130, 50) == ["x" * 50, "x" * 50, "x" * 30]

    async def body(engine: QwenEngine) -> int:
        return sum(len(c) for c in await collect(engine, SynthesisRequest(text, Voice(design="calm"))))

    samples = run_engine(qwen_tiny_models, body, max_chars=120, generation={**GREEDY, "max_new_tokens": 6})
    assert samples == len(split_long(text, 120)) * 5 * FRAME


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
