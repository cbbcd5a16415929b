"""The preview engine on real Piper: design words and references move the voice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from server.audio import SAMPLE_RATE
from server.engines.base import Reference, SynthesisRequest, Voice
from server.engines.preview import VOICE_PITCH_HZ, VOICE_RATE, PreviewEngine
from server.engines.prosody import median_pitch, speaking_rate, style_from_description

TEXT = "The birch canoe slid on the smooth planks of the old wooden dock."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[PreviewEngine]:
    preview = PreviewEngine(workers=2)
    await preview.start()
    yield preview
    await preview.close()


async def say(engine: PreviewEngine, voice: Voice, text: str = TEXT) -> np.ndarray:
    chunks = [chunk async for chunk in engine.synthesize(SynthesisRequest(text, voice))]
    return np.concatenate(chunks)


def test_description_words_turn_the_dials() -> None:
    deep, high = style_from_description("a very deep voice"), style_from_description("a high, squeaky girl")
    assert deep.pitch < 0.8 < 1.0 < 1.5 < high.pitch
    assert style_from_description("slow and calm").pace < 1 < style_from_description("fast, energetic").pace
    assert style_from_description("whispering softly").whisper
    assert style_from_description("nothing known here") == style_from_description("")


def test_pitch_and_rate_analysis_on_known_signals() -> None:
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    tone = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * (np.sin(2 * np.pi * 3 * t) > -0.5)
    assert median_pitch(tone.astype(np.float32), SAMPLE_RATE) == pytest.approx(150, rel=0.03)
    bursts = (np.sin(2 * np.pi * 4 * t) > 0.3) * np.sin(2 * np.pi * 200 * t)  # 4 "syllables" a second
    assert speaking_rate(bursts.astype(np.float32), SAMPLE_RATE) == pytest.approx(4, rel=0.25)
    assert median_pitch(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE) is None


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("low", "high"), [("a very deep voice", "a high squeaky child")])
async def test_designs_move_pitch(engine: PreviewEngine, low: str, high: str) -> None:
    deep, bright = await asyncio.gather(say(engine, Voice(design=low)), say(engine, Voice(design=high)))
    assert median_pitch(bright, SAMPLE_RATE) > 1.4 * median_pitch(deep, SAMPLE_RATE)


@pytest.mark.asyncio(loop_scope="module")
async def test_clone_follows_the_reference_pitch(engine: PreviewEngine) -> None:
    # References rendered by the engine itself at known pitches: the clone of
    # the higher one must come out higher.
    low_ref = await say(engine, Voice(design="a very deep voice"), "A reference recording, long enough to measure.")
    high_ref = await say(engine, Voice(design="a high squeaky girl"), "A reference recording, long enough to measure.")
    low = await say(engine, Voice(reference=Reference(low_ref, key="low")))
    high = await say(engine, Voice(reference=Reference(high_ref, key="high")))
    assert median_pitch(high, SAMPLE_RATE) > 1.3 * median_pitch(low, SAMPLE_RATE)


@pytest.mark.asyncio(loop_scope="module")
async def test_pace_changes_duration_not_pitch(engine: PreviewEngine) -> None:
    slow, fast = await asyncio.gather(say(engine, Voice(design="very slow")), say(engine, Voice(design="very fast")))
    assert len(slow) > 1.4 * len(fast)
    assert median_pitch(slow, SAMPLE_RATE) == pytest.approx(median_pitch(fast, SAMPLE_RATE), rel=0.15)


@pytest.mark.asyncio(loop_scope="module")
async def test_closing_the_stream_early_is_clean(engine: PreviewEngine) -> None:
    stream = engine.synthesize(SynthesisRequest(TEXT, Voice(design="calm")))
    first = await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(first) > 0 and engine.health()["queue_depth"] == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_control_characters_are_spaces_not_an_engine_error(engine: PreviewEngine) -> None:
    # A NUL would end espeak's C string: Piper raised ValueError, an engine_error (found by the fuzzer).
    audio = await say(engine, Voice(design="calm"), "Before\x00after,\x1b[0m and\x07 on.")
    assert len(audio) > SAMPLE_RATE // 2


@pytest.mark.asyncio(loop_scope="module")
async def test_the_voice_measures_what_clone_ratios_assume(engine: PreviewEngine) -> None:
    """The bundled voice's pitch and rate are constants now; measured again, they must hold."""
    text = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."
    neutral = Voice(design="")  # no words that move a dial: the voice as it is (Style())
    renders = await asyncio.gather(*(say(engine, neutral, text) for _ in range(4)))  # one render varies with the model's noise
    assert np.median([median_pitch(a, SAMPLE_RATE) for a in renders]) == pytest.approx(VOICE_PITCH_HZ, rel=0.04)
    # Rate varies more: 24 renders measured 4.41-5.07 syllables/s, and a median of 4 came to 4.40 once in CI.
    assert np.median([speaking_rate(a, SAMPLE_RATE) for a in renders]) == pytest.approx(VOICE_RATE, rel=0.15)
